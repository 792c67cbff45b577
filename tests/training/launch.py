"""Run `megastack.pretrain` as a real job (torchrun for several ranks) and read its metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

TINY = ["--model", "tiny-4l", "--mock-data", "--micro-batch-size", "1", "--global-batch-size",
        "8", "--log-interval", "1", "--eval-interval", "1000", "--eval-iters", "1", "--lr", "1e-3",
        "--lr-warmup-iters", "1"]


def run_pretrain(args: list[str], nproc: int, metrics: Path, timeout: int = 600,
                 check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEGASTACK_METRICS_FILE": str(metrics), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "megastack.pretrain", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "megastack.pretrain", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def read_metrics(path: Path, key: str = "lm loss", phase: Optional[str] = None) -> dict[int, float]:
    out = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if key in record and (phase is None or record.get("phase") == phase):
            out[int(record["iteration"])] = record[key]
    return out
