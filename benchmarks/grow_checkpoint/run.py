"""Benchmark offline growth: time and peak memory of tools/grow_checkpoint.py vs copying the bytes.

    python benchmarks/grow_checkpoint/run.py --work /tmp/grow_bench

1. writes a synthetic source checkpoint of the 6L2048H preset (random fp32, megatron-core's
   torch_dist layout and keys) tensor by tensor with megastack's model-free writer;
2. grows it 6 -> 24 layers with G_stack (`0-5*4`) in a fresh process running the tool's library
   call, recording wall time and the process's peak RSS;
3. copies the grown checkpoint with `cp -r` (same bytes as the conversion writes), with and
   without an fsync of every copied file (the conversion fsyncs what it writes by default);
4. writes results.json and results.md next to this script (or --out).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
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


def convert(src: str, dst: str, stacking_list: str) -> dict:
    """Runs in its own process so ru_maxrss is this conversion's peak."""
    start = time.monotonic()
    from megastack.growth.grow_checkpoint import grow_checkpoint

    imported = time.monotonic()
    report = grow_checkpoint(src, dst, stacking_list=stacking_list, operator="stack")
    done = time.monotonic()
    return {"seconds": done - imported, "seconds_with_imports": done - start,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "bytes_written": report.bytes_written, "tensors": report.tensors_written}


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


def run_all(a) -> dict:
    os.makedirs(a.work, exist_ok=True)
    src, dst = os.path.join(a.work, "src"), os.path.join(a.work, "grown")
    for path in (src, dst, dst + ".tmp"):
        shutil.rmtree(path, ignore_errors=True)
    made = make_source(src, a.preset, a.seed)
    print(f"source written in {made['seconds']:.1f} s", flush=True)

    proc = subprocess.run([sys.executable, __file__, "convert", "--src", src, "--dst", dst,
                           "--stacking-list", a.stacking_list],
                          capture_output=True, text=True, check=True, cwd=REPO)
    conv = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"conversion {conv['seconds']:.1f} s, peak RSS {conv['peak_rss_bytes'] / 2**30:.2f} GiB",
          flush=True)

    copy_fsync = timed_copy(dst, os.path.join(a.work, "copy"), fsync=True)
    copy_plain = timed_copy(dst, os.path.join(a.work, "copy"), fsync=False)
    src_key, src_big = largest_tensor(os.path.join(src, "iter_0000100"))
    dst_key, dst_big = largest_tensor(os.path.join(dst, "iter_0000000"))
    results = {
        "command": f"python benchmarks/grow_checkpoint/run.py --work {a.work} --preset {a.preset} "
                   f"--stacking-list '{a.stacking_list}'",
        "machine": {"cpus": os.cpu_count(), "load_average_1m_at_end": os.getloadavg()[0],
                    "python": platform.python_version(),
                    "note": "2 cores shared with other jobs; timings are noisy"},
        "source": {"preset": a.preset, "params": made["params"],
                   "bytes_on_disk": dir_bytes(src), "largest_tensor": src_key,
                   "largest_tensor_bytes": src_big},
        "target": {"bytes_on_disk": dir_bytes(dst), "largest_tensor": dst_key,
                   "largest_tensor_bytes": dst_big, "tensors": conv["tensors"]},
        "conversion_seconds": conv["seconds"],
        "conversion_seconds_with_imports": conv["seconds_with_imports"],
        "cp_r_fsync_seconds": copy_fsync,
        "cp_r_seconds": copy_plain,
        "time_ratio_vs_cp_fsync": conv["seconds"] / copy_fsync,
        "time_ratio_vs_cp": conv["seconds"] / copy_plain,
        "peak_rss_bytes": conv["peak_rss_bytes"],
        "rss_ratio_vs_largest_target_tensor": conv["peak_rss_bytes"] / dst_big,
        "rss_ratio_vs_largest_source_tensor": conv["peak_rss_bytes"] / src_big,
    }
    if not a.keep:
        shutil.rmtree(a.work, ignore_errors=True)
    return results


def write_results(results: dict, out: str) -> None:
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    gb = 1e9
    r = results
    rows = [
        ("source checkpoint", f"{r['source']['preset']}, {r['source']['params'] / 1e6:.0f}M params, "
                              f"{r['source']['bytes_on_disk'] / gb:.2f} GB"),
        ("grown checkpoint", f"{r['target']['bytes_on_disk'] / gb:.2f} GB"),
        ("conversion (stack, fsync)", f"{r['conversion_seconds']:.1f} s "
                                      f"({r['conversion_seconds_with_imports']:.1f} s with imports)"),
        ("cp -r of the grown checkpoint + fsync", f"{r['cp_r_fsync_seconds']:.1f} s"),
        ("cp -r of the grown checkpoint", f"{r['cp_r_seconds']:.1f} s"),
        ("time vs cp -r + fsync (target <= 2x)", f"{r['time_ratio_vs_cp_fsync']:.2f}x"),
        ("time vs cp -r", f"{r['time_ratio_vs_cp']:.2f}x"),
        ("peak RSS", f"{r['peak_rss_bytes'] / gb:.2f} GB"),
        ("largest stacked tensor (target)", f"{r['target']['largest_tensor']} "
                                            f"{r['target']['largest_tensor_bytes'] / gb:.2f} GB"),
        ("largest stacked tensor (source)", f"{r['source']['largest_tensor_bytes'] / gb:.2f} GB"),
        ("peak RSS / largest target tensor (target <= 3x + c)",
         f"{r['rss_ratio_vs_largest_target_tensor']:.2f}x"),
        ("peak RSS / largest source tensor", f"{r['rss_ratio_vs_largest_source_tensor']:.2f}x"),
        ("machine", f"{r['machine']['cpus']} cores, load average {r['machine']['load_average_1m_at_end']:.1f} "
                    f"at the end; {r['machine']['note']}"),
    ]
    lines = ["# grow_checkpoint benchmark results", "", f"Command: `{r['command']}`", "",
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
    parser.add_argument("--work", default="/tmp/grow_checkpoint_bench",
                        help="scratch directory (needs about 4.5x the target checkpoint size)")
    parser.add_argument("--preset", default="6L2048H")
    parser.add_argument("--stacking-list", default="0-5*4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=HERE, help="where results.json / results.md go")
    parser.add_argument("--keep", action="store_true", help="keep the scratch checkpoints")
    a = parser.parse_args(argv)
    if a.cmd == "convert":
        print(json.dumps(convert(a.src, a.dst, a.stacking_list)))
        return 0
    results = run_all(a)
    write_results(results, a.out)
    print(open(os.path.join(a.out, "results.md")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
