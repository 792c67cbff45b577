"""Time a rank's import of megatron-core, plain vs through megastack's CPU import.

    python benchmarks/startup/run.py --rounds 7

Each sample is a fresh `python -c` process that imports torch, then megatron-core and the
modules a training rank uses (GPT model, schedules, optimizer, DDP, dist checkpointing,
GPTDataset), either plainly or after `megastack.runtime.cpu_compat.import_megatron_core()`
(megatron-core's torch.compile JIT fuser off, on CPU only). The two kinds alternate, so machine
noise hits both alike; the medians and their ratio go to results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

RANK_IMPORTS = """
import megastack.training.trainer
from megatron.core.models.gpt import GPTModel
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.distributed import DistributedDataParallel
from megatron.core import dist_checkpointing
from megatron.core.datasets.gpt_dataset import GPTDataset
"""
PROLOGUES = {
    "plain": "",
    "megastack": "from megastack.runtime import cpu_compat; cpu_compat.import_megatron_core()\n",
}


def sample(kind: str) -> float:
    code = ("import sys, time, torch\nstart = time.perf_counter()\n" + PROLOGUES[kind]
            + RANK_IMPORTS + "print(time.perf_counter() - start, 'torch._inductor' in sys.modules)")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=REPO, check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
    seconds, inductor = out.stdout.split()
    assert (inductor == "True") == (kind == "plain"), (kind, inductor)
    return float(seconds)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", default=HERE, help="where results.json and results.md go")
    a = p.parse_args(argv)
    times: dict[str, list[float]] = {kind: [] for kind in PROLOGUES}
    for _ in range(a.rounds):
        for kind in PROLOGUES:
            times[kind].append(sample(kind))
    medians = {kind: statistics.median(v) for kind, v in times.items()}
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                          f"{platform.python_version()}",
               "command": "python benchmarks/startup/run.py " + " ".join(argv or sys.argv[1:]),
               "seconds": times, "median_seconds": medians,
               "ratio": medians["megastack"] / medians["plain"]}
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    lines = [f"# megatron-core import time of a rank ({results['machine']})", "",
             "| import | median s | samples |", "|---|---:|---|"]
    lines += [f"| {kind} | {medians[kind]:.2f} | {', '.join(f'{t:.2f}' for t in times[kind])} |"
              for kind in PROLOGUES]
    lines += ["", f"megastack / plain: {results['ratio']:.2f}", "",
              f"Command: `{results['command'].strip()}`"]
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
