r"""Tokens/s of megastack's trainer vs a plain megatron-core loop, same model and data, one process.

Runs the two alternately (ROUNDS times each, fresh processes) so machine noise hits both alike,
and reports medians and their ratio. Writes JSON to --out.

    python benchmarks/trainer/bench_trainer.py --model mini-8l128h --rounds 3 \
        --out benchmarks/trainer/results_cpu.json
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_megastack(model: str, mbs: int, gbs: int, iters: int, warmup: int, bf16: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "m.jsonl"
        cmd = [sys.executable, "-m", "megastack.pretrain", "--model", model, "--mock-data",
               "--micro-batch-size", str(mbs), "--global-batch-size", str(gbs),
               "--train-iters", str(iters), "--log-interval", "1", "--eval-interval", "100000",
               "--eval-iters", "1",
               "--transformer-impl", "auto"] + (["--bf16"] if bf16 else [])
        subprocess.run(cmd, check=True, env={**os.environ, "MEGASTACK_METRICS_FILE": str(metrics)},
                       stdout=subprocess.DEVNULL)
        records = [json.loads(l) for l in metrics.read_text().splitlines()]
    steady = [r for r in records if "tokens-per-sec" in r and r["iteration"] > warmup]
    out = {"impl": "megastack", "tokens_per_sec": statistics.median(r["tokens-per-sec"] for r in steady)}
    for key in ("throughput", "mfu"):
        if key in steady[-1]:
            out[key] = statistics.median(r[key] for r in steady)
    if "mem-max-allocated-GB" in steady[-1]:  # a running maximum: the last value is the peak
        out["mem-max-allocated-GB"] = steady[-1]["mem-max-allocated-GB"]
    return out


def run_plain(model: str, mbs: int, gbs: int, iters: int, warmup: int, bf16: bool) -> dict:
    cmd = [sys.executable, str(HERE / "plain_mcore_loop.py"), "--model", model,
           "--micro-batch-size", str(mbs), "--global-batch-size", str(gbs),
           "--train-iters", str(iters), "--warmup-iters", str(warmup)] + (["--bf16"] if bf16 else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="mini-8l128h")
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--global-batch-size", type=int, default=8)
    p.add_argument("--train-iters", type=int, default=30)
    p.add_argument("--warmup-iters", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    args = (a.model, a.micro_batch_size, a.global_batch_size, a.train_iters, a.warmup_iters, a.bf16)
    rounds = []
    for i in range(a.rounds):
        plain = run_plain(*args)
        ours = run_megastack(*args)
        rounds.append({"plain": plain, "megastack": ours})
        print(f"round {i + 1}: plain {plain['tokens_per_sec']:.0f} tok/s, "
              f"megastack {ours['tokens_per_sec']:.0f} tok/s", flush=True)
    plain_med = statistics.median(r["plain"]["tokens_per_sec"] for r in rounds)
    ours_med = statistics.median(r["megastack"]["tokens_per_sec"] for r in rounds)
    import torch
    result = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "model": a.model, "micro_batch_size": a.micro_batch_size,
        "global_batch_size": a.global_batch_size, "bf16": a.bf16,
        "rounds": rounds,
        "plain_megatron_core_tokens_per_sec_median": plain_med,
        "megastack_tokens_per_sec_median": ours_med,
        "ratio_megastack_over_plain": ours_med / plain_med,
    }
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))


if __name__ == "__main__":
    main()
