"""--exit-signal-handler: a SIGTERM to one rank saves and stops every rank at one iteration."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.training.launch import TINY, read_metrics


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


@pytest.mark.slow
def test_sigterm_to_one_rank_saves_and_stops_all(tmp_path):
    save, metrics = tmp_path / "ckpt", tmp_path / "m.jsonl"
    env = {**os.environ, "MEGASTACK_METRICS_FILE": str(metrics), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "megastack.pretrain", *TINY, "--train-iters", "100000", "--save", str(save),
           "--exit-signal-handler"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.time() + 300
        while not (metrics.exists() and len(read_metrics(metrics)) >= 2):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
            time.sleep(0.5)
        workers = _children(proc.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]
    last = max(read_metrics(metrics))
    assert 2 <= last < 100000
    assert (save / "latest_checkpointed_iteration.txt").read_text() == str(last)
    assert f"exiting at iteration {last}: SIGTERM received (--exit-signal-handler)" in out


def test_the_handler_records_its_signal_only_inside_its_block():
    from megastack.training import exit_signal

    with exit_signal.exit_signal_handler("SIGUSR1"):
        assert exit_signal.received() is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert exit_signal.received() == "SIGUSR1"
    assert exit_signal.received() is None
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
