"""A process killed in the middle of saving leaves the previous checkpoint loadable."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.training.launch import TINY, read_metrics, run_pretrain

pytestmark = pytest.mark.slow


def test_kill_during_save_keeps_previous_checkpoint(tmp_path):
    save = tmp_path / "ckpt"
    metrics = tmp_path / "m.jsonl"
    env = {**os.environ, "MEGASTACK_METRICS_FILE": str(metrics), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "megastack.pretrain", *TINY, "--train-iters", "4",
           "--save", str(save), "--save-interval", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    in_progress = save / "iter_0000004.tmp"
    deadline = time.monotonic() + 300
    try:
        while not in_progress.exists():
            assert proc.poll() is None, "training ended before the second save started"
            assert time.monotonic() < deadline, "the second save never started"
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its checkpoint writer processes
    finally:
        proc.wait(timeout=60)

    assert (save / "latest_checkpointed_iteration.txt").read_text() == "2"
    assert not (save / "iter_0000004").exists()
    assert (save / "iter_0000002" / "metadata.json").exists()

    # The previous checkpoint loads and training resumes from it; the debris is cleaned up.
    resumed = tmp_path / "resumed.jsonl"
    run_pretrain(TINY + ["--train-iters", "4", "--load", str(save), "--save", str(save)],
                 nproc=1, metrics=resumed)
    assert sorted(read_metrics(resumed)) == [3, 4]
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "4"
    assert not in_progress.exists()
