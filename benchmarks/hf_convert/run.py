"""Benchmark the Hugging Face conversion: time and peak memory of tools/export_hf.py and
tools/import_hf.py on a synthetic 1B-class checkpoint.

    python benchmarks/hf_convert/run.py --work /tmp/hf_bench

1. writes a synthetic checkpoint of --preset (random fp32, megatron-core's torch_dist keys and
   layout) with megastack's model-free writer (benchmarks/grow_checkpoint's source);
2. exports it to bf16 with the default 5 GiB shards and with 0.25 GiB shards, then imports the
   first export back to fp32, each tool in a fresh process (`python tools/...`), recording wall
   time and the process's peak RSS;
3. writes results.json and results.md next to this script (or --out).

The claim checked: the export holds one layer's weights, the embedding and one shard, so its
peak RSS follows the shard size, not the model; the import holds one layer and the embedding,
so its peak does not follow the model either.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def _grow_benchmark():
    """benchmarks/grow_checkpoint/run.py: its synthetic source writer."""
    path = os.path.join(REPO, "benchmarks", "grow_checkpoint", "run.py")
    spec = importlib.util.spec_from_file_location("grow_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def peak_rss_of(args: list[str]) -> dict:
    """Wall time and peak RSS of `python ARGS`, run under a wrapper process of its own so that
    the children's ru_maxrss is this tool's alone."""
    code = ("import json, resource, subprocess, sys, time\n"
            "start = time.monotonic()\n"
            "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "print(json.dumps({'rc': p.returncode, 'seconds': time.monotonic() - start,\n"
            "  'peak_rss_bytes': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,\n"
            "  'stderr': p.stderr[-3000:]}))\n")
    out = subprocess.run([sys.executable, "-c", code, sys.executable, *args], cwd=REPO,
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result['stderr']}")
    return {"seconds": round(result["seconds"], 2), "peak_rss_bytes": result["peak_rss_bytes"]}


def run_all(a) -> dict:
    from megastack.config import ModelConfig

    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    src = os.path.join(a.work, "ckpt")
    made = _grow_benchmark().make_source(src, a.preset, seed=0)
    cfg = ModelConfig.from_name(a.preset)
    layer_bytes = 4 * (cfg.num_parameters(include_embeddings=False) // cfg.num_layers)
    runs = {}
    for name, shard_gb in (("export_bf16_shard_0.25GiB", 0.25), ("export_bf16_shard_5GiB", 5.0)):
        out = os.path.join(a.work, name)
        runs[name] = peak_rss_of(["tools/export_hf.py", "--load", src, "--output", out,
                                  "--dtype", "bf16", "--max-shard-size-gb", str(shard_gb)])
        runs[name]["bytes_written"] = dir_bytes(out)
        runs[name]["files"] = len(os.listdir(out))
    back = os.path.join(a.work, "imported")
    runs["import_fp32"] = peak_rss_of(["tools/import_hf.py", "--hf-dir",
                                       os.path.join(a.work, "export_bf16_shard_5GiB"),
                                       "--save", back])
    runs["import_fp32"]["bytes_written"] = dir_bytes(back)
    # The interpreter with torch and the tools' imports, doing nothing: the floor of every run.
    runs["imports_only"] = peak_rss_of(["-c", "import torch, safetensors, "
                                              "megastack.checkpoint.hf_convert"])
    if not a.keep:
        shutil.rmtree(a.work)
    return {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, "
        f"{os.cpu_count()} cores, {platform.python_version()}",
        "preset": a.preset, "parameters": made["params"],
        "checkpoint_bytes": made["tensor_bytes"], "one_layer_fp32_bytes": layer_bytes,
        "embedding_fp32_bytes": 4 * cfg.vocab_size * cfg.hidden_size, "runs": runs,
    }


def write_results(results: dict, out: str) -> None:
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    gib = 2 ** 30
    lines = [f"# Hugging Face conversion: {results['preset']} ({results['parameters'] / 1e6:.0f}M "
             f"parameters), {results['date']}, {results['machine']}", "",
             f"Checkpoint {results['checkpoint_bytes'] / gib:.2f} GiB (fp32); one layer "
             f"{results['one_layer_fp32_bytes'] / gib:.3f} GiB, embedding "
             f"{results['embedding_fp32_bytes'] / gib:.3f} GiB (fp32).", "",
             "| run | wall s | peak RSS GiB | written GiB |", "|---|---|---|---|"]
    for name, r in results["runs"].items():
        written = f"{r['bytes_written'] / gib:.2f}" if "bytes_written" in r else "-"
        lines.append(f"| {name} | {r['seconds']:.1f} | {r['peak_rss_bytes'] / gib:.2f} | "
                     f"{written} |")
    lines += ["", f"Command: `python benchmarks/hf_convert/run.py --work /tmp/hf_bench --preset "
                  f"{results['preset']}`"]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="scratch directory (removed unless --keep)")
    p.add_argument("--preset", default="6L2048H")
    p.add_argument("--out", default=HERE, help="where results.json and results.md go")
    p.add_argument("--keep", action="store_true")
    a = p.parse_args(argv)
    results = run_all(a)
    write_results(results, a.out)
    print(open(os.path.join(a.out, "results.md")).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
