"""The quickstart's settings come from environment variables: bad ones stop it before any work."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "pretrain_tiny_gstack.sh"


@pytest.mark.parametrize("env, message", [
    # 0 small iterations meant --exit-interval 0: the small model trained for the whole run
    ({"SMALL_ITERS": "0"}, "SMALL_ITERS=0 must be a whole number >= 1"),
    ({"SMALL_ITERS": "128"}, "SMALL_ITERS=128 must be below TRAIN_ITERS=128"),
    ({"EVAL_INTERVAL": "0"}, "EVAL_INTERVAL=0 must be a whole number >= 1"),
    ({"TRAIN_ITERS": "many"}, "TRAIN_ITERS=many must be a whole number >= 1"),
])
def test_bad_settings_stop_before_any_work(tmp_path, env, message):
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(SCRIPT)],
                          env={**os.environ, "OUTPUT_DIR": str(out), "PYTHON": sys.executable, **env},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "division by 0" not in proc.stderr
    assert not out.exists()
