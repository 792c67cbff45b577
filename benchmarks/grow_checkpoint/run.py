"""Benchmark offline growth: time and peak memory of tools/grow_checkpoint.py vs copying the bytes.

    python benchmarks/grow_checkpoint/run.py --work /tmp/grow_bench

1. writes a synthetic source checkpoint of the 6L2048H preset (random fp32, megatron-core's
   torch_dist layout and keys) tensor by tensor with megastack's model-free writer;
2. per round: grows it 6 -> 24 layers with G_stack (`0-5*4`) in a fresh process running the
   tool's library call (fsync on, the default), then copies the grown checkpoint with `cp -r` +
   fsync of every file; then the same pair without fsync (`--no-fsync` vs plain `cp -r`); then
   the conversion with verbatim record copies disabled (the decode/re-encode path that sources
   split by tensor parallelism take), recording wall time and each process's peak RSS;
3. writes results.json and results.md next to this script (or --out), with medians over rounds.

The pairs run back to back because this machine's speed drifts by up to 2x within minutes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def layer_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Global shapes megatron-core's GPTModel (local/TE spec) saves for this architecture."""
    L, h, f, V = cfg.num_layers, cfg.hidden_size, cfg.ffn_hidden_size, cfg.vocab_size
    hd = cfg.head_dim
    qkv_rows = (cfg.num_attention_heads + 2 * cfg.num_query_groups) * hd
    return {
        "embedding.word_embeddings.weight": (V, h),
        "decoder.layers.self_attention.linear_qkv.layer_norm_weight": (L, h),
        "decoder.layers.self_attention.linear_qkv.weight": (L, qkv_rows, h),
        "decoder.layers.self_attention.linear_proj.weight": (L, h, cfg.num_attention_heads * hd),
        "decoder.layers.mlp.linear_fc1.layer_norm_weight": (L, h),
        "decoder.layers.mlp.linear_fc1.weight": (L, 2 * f if cfg.swiglu else f, h),
        "decoder.layers.mlp.linear_fc2.weight": (L, h, f),
        "decoder.final_layernorm.weight": (h,),
        "output_layer.weight": (V, h),
    }


EXTRA_STATE_MODULES = ("self_attention.linear_qkv", "self_attention.linear_proj",
                       "mlp.linear_fc1", "mlp.linear_fc2")


def make_source(root: str, preset: str, seed: int) -> dict:
    import dataclasses

    import torch

    from megastack.checkpoint.dist_writer import DistCheckpointWriter
    from megastack.config import ModelConfig, ParallelConfig

    cfg = ModelConfig.from_name(preset)
    ckpt = os.path.join(root, "iter_0000100")
    writer = DistCheckpointWriter(ckpt)
    gen = torch.Generator().manual_seed(seed)
    for key, shape in layer_shapes(cfg).items():
        writer.add_tensor(key, shape, torch.float32,
                          lambda shape=shape: torch.randn(shape, generator=gen) * 0.02,
                          layer_stacked=key.startswith("decoder.layers."))
    empty = io.BytesIO()
    torch.save([None], empty)  # what the local spec's per-layer _extra_state serializes to
    for module in EXTRA_STATE_MODULES:
        for i in range(cfg.num_layers):
            writer.add_object(f"decoder.layers.{module}._extra_state/shard_{i}_{cfg.num_layers}",
                              lambda: empty.getvalue())
    common = {"iteration": 100, "checkpoint_version": 3.0,
              "args": argparse.Namespace(num_layers=cfg.num_layers, hidden_size=cfg.hidden_size,
                                         iteration=100),
              "megastack": {"model": cfg.to_dict(), "parallel": dataclasses.asdict(ParallelConfig())}}
    start = time.monotonic()
    stats = writer.write(common)
    with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write("100")
    return {"seconds": time.monotonic() - start, "tensor_bytes": stats.tensor_bytes,
            "params": cfg.num_parameters()}


def convert(src: str, dst: str, stacking_list: str, fsync: bool, verbatim: bool) -> dict:
    """Runs in its own process so ru_maxrss is this conversion's peak."""
    start = time.monotonic()
    from megastack.checkpoint.dist_reader import DistCheckpointReader
    from megastack.growth.grow_checkpoint import grow_checkpoint

    if not verbatim:  # what a source whose layers are split by tensor parallelism goes through
        DistCheckpointReader.layer_records = lambda self, key: None
    imported = time.monotonic()
    report = grow_checkpoint(src, dst, stacking_list=stacking_list, operator="stack", fsync=fsync)
    done = time.monotonic()
    return {"seconds": done - imported, "seconds_with_imports": done - start,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "bytes_written": report.bytes_written, "tensors": report.tensors_written,
            "copied_records": report.records_copied}


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def largest_tensor(ckpt: str) -> tuple[str, int]:
    from megastack.checkpoint.dist_reader import DistCheckpointReader

    reader = DistCheckpointReader(ckpt)
    key = max(reader.tensor_keys(), key=reader.nbytes)
    return key, reader.nbytes(key)


def timed_copy(src: str, dst: str, fsync: bool) -> float:
    shutil.rmtree(dst, ignore_errors=True)
    start = time.monotonic()
    subprocess.run(["cp", "-r", src, dst], check=True)
    if fsync:
        for root, _, files in os.walk(dst):
            for name in files:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
    seconds = time.monotonic() - start
    shutil.rmtree(dst)
    return seconds


def run_convert(a, src: str, dst: str, fsync: bool, verbatim: bool) -> dict:
    shutil.rmtree(dst, ignore_errors=True)
    cmd = [sys.executable, __file__, "convert", "--src", src, "--dst", dst,
           "--stacking-list", a.stacking_list]
    cmd += [] if fsync else ["--no-fsync"]
    cmd += [] if verbatim else ["--decode"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_all(a) -> dict:
    os.makedirs(a.work, exist_ok=True)
    src, dst = os.path.join(a.work, "src"), os.path.join(a.work, "grown")
    copy = os.path.join(a.work, "copy")
    for path in (src, dst, dst + ".tmp"):
        shutil.rmtree(path, ignore_errors=True)
    made = make_source(src, a.preset, a.seed)
    print(f"source written in {made['seconds']:.1f} s", flush=True)

    rounds = []
    for i in range(a.rounds):
        r = {"convert_fsync": run_convert(a, src, dst, fsync=True, verbatim=True)}
        r["cp_fsync"] = timed_copy(dst, copy, fsync=True)
        r["convert"] = run_convert(a, src, dst, fsync=False, verbatim=True)
        r["cp"] = timed_copy(dst, copy, fsync=False)
        r["convert_decode_fsync"] = run_convert(a, src, dst, fsync=True, verbatim=False)
        rounds.append(r)
        print(f"round {i + 1}/{a.rounds}: convert {r['convert_fsync']['seconds']:.1f} s vs "
              f"cp+fsync {r['cp_fsync']:.1f} s; no fsync {r['convert']['seconds']:.1f} s vs cp "
              f"{r['cp']:.1f} s; decode path {r['convert_decode_fsync']['seconds']:.1f} s",
              flush=True)

    def med(values):
        return statistics.median(values)

    def ratios(conv, cp):
        return [r[conv]["seconds"] / r[cp] for r in rounds]

    src_key, src_big = largest_tensor(os.path.join(src, "iter_0000100"))
    dst_key, dst_big = largest_tensor(os.path.join(dst, "iter_0000000"))
    peak = max(r[k]["peak_rss_bytes"] for r in rounds for k in ("convert_fsync", "convert"))
    peak_decode = max(r["convert_decode_fsync"]["peak_rss_bytes"] for r in rounds)
    last = rounds[-1]["convert_fsync"]
    results = {
        "command": f"python benchmarks/grow_checkpoint/run.py --work {a.work} --preset {a.preset} "
                   f"--stacking-list '{a.stacking_list}' --rounds {a.rounds}",
        "machine": {"cpus": os.cpu_count(), "load_average_1m_at_end": os.getloadavg()[0],
                    "python": platform.python_version()},
        "source": {"preset": a.preset, "params": made["params"],
                   "bytes_on_disk": dir_bytes(src), "largest_tensor": src_key,
                   "largest_tensor_bytes": src_big},
        "target": {"bytes_on_disk": dir_bytes(dst), "largest_tensor": dst_key,
                   "largest_tensor_bytes": dst_big, "tensors": last["tensors"],
                   "records_copied_verbatim": last["copied_records"]},
        "rounds": rounds,
        "conversion_fsync_seconds": med([r["convert_fsync"]["seconds"] for r in rounds]),
        "conversion_seconds": med([r["convert"]["seconds"] for r in rounds]),
        "conversion_decode_fsync_seconds": med([r["convert_decode_fsync"]["seconds"]
                                                for r in rounds]),
        "conversion_fsync_seconds_with_imports": med([r["convert_fsync"]["seconds_with_imports"]
                                                      for r in rounds]),
        "cp_r_fsync_seconds": med([r["cp_fsync"] for r in rounds]),
        "cp_r_seconds": med([r["cp"] for r in rounds]),
        "time_ratio_fsync_vs_cp_fsync": med(ratios("convert_fsync", "cp_fsync")),
        "time_ratio_vs_cp": med(ratios("convert", "cp")),
        "time_ratio_fsync_vs_cp": med(ratios("convert_fsync", "cp")),
        "time_ratio_decode_fsync_vs_cp_fsync": med(ratios("convert_decode_fsync", "cp_fsync")),
        "peak_rss_bytes": peak,
        "peak_rss_decode_bytes": peak_decode,
        "rss_ratio_vs_largest_target_tensor": peak / dst_big,
        "rss_ratio_decode_vs_largest_target_tensor": peak_decode / dst_big,
    }
    if not a.keep:
        shutil.rmtree(a.work, ignore_errors=True)
    return results


def write_results(results: dict, out: str) -> None:
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    gb = 1e9
    r = results

    def per_round(conv, cp):
        return " / ".join(f"{x[conv]['seconds'] / x[cp]:.2f}" for x in r["rounds"])

    rows = [
        ("source checkpoint", f"{r['source']['preset']}, {r['source']['params'] / 1e6:.0f}M params, "
                              f"{r['source']['bytes_on_disk'] / gb:.2f} GB, one record per layer "
                              "(as megatron-core writes at TP 1)"),
        ("grown checkpoint", f"{r['target']['bytes_on_disk'] / gb:.2f} GB, "
                             f"{r['target']['records_copied_verbatim']} layer records copied "
                             "verbatim"),
        ("conversion, fsync (default)", f"{r['conversion_fsync_seconds']:.1f} s "
                                        f"({r['conversion_fsync_seconds_with_imports']:.1f} s "
                                        "with imports)"),
        ("cp -r + fsync", f"{r['cp_r_fsync_seconds']:.1f} s"),
        ("**conversion vs cp -r + fsync (target <= 2x)**",
         f"**{r['time_ratio_fsync_vs_cp_fsync']:.2f}x** (rounds: "
         f"{per_round('convert_fsync', 'cp_fsync')})"),
        ("conversion --no-fsync", f"{r['conversion_seconds']:.1f} s"),
        ("cp -r", f"{r['cp_r_seconds']:.1f} s"),
        ("**conversion --no-fsync vs cp -r (target <= 2x)**",
         f"**{r['time_ratio_vs_cp']:.2f}x** (rounds: {per_round('convert', 'cp')})"),
        ("conversion (fsync) vs cp -r without fsync", f"{r['time_ratio_fsync_vs_cp']:.2f}x"),
        ("decode path (TP-split sources), fsync", f"{r['conversion_decode_fsync_seconds']:.1f} s = "
                                                  f"{r['time_ratio_decode_fsync_vs_cp_fsync']:.2f}x "
                                                  "cp -r + fsync"),
        ("peak RSS (verbatim / decode path)", f"{r['peak_rss_bytes'] / gb:.2f} GB / "
                                              f"{r['peak_rss_decode_bytes'] / gb:.2f} GB"),
        ("largest stacked tensor (target)", f"{r['target']['largest_tensor']} "
                                            f"{r['target']['largest_tensor_bytes'] / gb:.2f} GB"),
        ("largest stacked tensor (source)", f"{r['source']['largest_tensor_bytes'] / gb:.2f} GB"),
        ("**peak RSS / largest target tensor (target <= 3x + c)**",
         f"**{r['rss_ratio_vs_largest_target_tensor']:.2f}x** (decode path "
         f"{r['rss_ratio_decode_vs_largest_target_tensor']:.2f}x)"),
        ("machine", f"{r['machine']['cpus']} cores, load average "
                    f"{r['machine']['load_average_1m_at_end']:.1f} at the end"),
    ]
    lines = ["# grow_checkpoint benchmark results", "", f"Command: `{r['command']}`", "",
             f"Medians over {len(r['rounds'])} rounds; each ratio pairs runs of one round.", "",
             "| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd")
    c = sub.add_parser("convert", help="internal: one conversion, JSON on stdout")
    c.add_argument("--src", required=True)
    c.add_argument("--dst", required=True)
    c.add_argument("--stacking-list", required=True)
    c.add_argument("--no-fsync", action="store_true")
    c.add_argument("--decode", action="store_true", help="disable verbatim record copies")
    parser.add_argument("--work", default="/tmp/grow_checkpoint_bench",
                        help="scratch directory (needs about 4.5x the target checkpoint size)")
    parser.add_argument("--preset", default="6L2048H")
    parser.add_argument("--stacking-list", default="0-5*4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=HERE, help="where results.json / results.md go")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the scratch checkpoints")
    a = parser.parse_args(argv)
    if a.cmd == "convert":
        print(json.dumps(convert(a.src, a.dst, a.stacking_list, fsync=not a.no_fsync,
                                 verbatim=not a.decode)))
        return 0
    results = run_all(a)
    write_results(results, a.out)
    print(open(os.path.join(a.out, "results.md")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
