"""--log-progress: Megatron-LM's progress.txt in the --save directory.

One tab-separated line per event (job start, every checkpoint), appended by rank 0, so that a run
spread over many jobs (EXIT_DURATION_MINS resubmissions) can be followed in one file: the
iteration, this job's and the run's model TFLOP/s per GPU, the run's floating-point operations
and tokens. The run's totals travel in the checkpoints (`num_floating_point_operations_so_far`,
as Megatron-LM names it, and the training seconds behind it).
"""

from __future__ import annotations

import datetime
import os
from typing import Optional

PROGRESS_FILE = "progress.txt"


class ProgressLog:
    def __init__(self, save_dir: str, world_size: int, writer: bool):
        self.path = os.path.join(save_dir, PROGRESS_FILE)
        self.world_size = world_size
        self.writer = writer  # rank 0 writes; the others keep nothing
        self.job_id = os.environ.get("SLURM_JOB_ID", "local")

    def _append(self, event: str, fields: Optional[dict[str, str]] = None) -> None:
        if not self.writer:
            return
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        parts = [stamp, f"Job ID: {self.job_id}", f"# GPUs: {self.world_size}", event]
        parts += [f"{k}: {v}" for k, v in (fields or {}).items()]
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "a") as f:
            f.write("\t".join(parts) + "\n")

    def job_started(self, iteration: int) -> None:
        self._append("Starting job", {"Iteration": str(iteration)})

    def checkpoint_saved(self, iteration: int, job_flops: float, job_seconds: float,
                         total_flops: float, total_seconds: float, tokens: int) -> None:
        def tflops(flops: float, seconds: float) -> str:
            return f"{flops / max(seconds, 1e-9) / self.world_size / 1e12:.4g} TFLOP/s/GPU"

        self._append("Saved checkpoint", {
            "Iteration": str(iteration),
            "Job throughput": tflops(job_flops, job_seconds),
            "Cumulative throughput": tflops(total_flops, total_seconds),
            "Floating-point operations": f"{total_flops:.4e}",
            "Tokens (in billions)": f"{tokens / 1e9:.6g}",
        })
