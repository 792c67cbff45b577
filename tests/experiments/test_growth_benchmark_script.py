"""benchmarks/growth/run.py reruns a phase whenever what it would compute has changed."""

import json

import pytest

from tests.scripts import load_script

@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/growth/run.py")


def test_a_phase_is_reused_only_for_the_same_command_after_the_same_source(bench, tmp_path):
    done = tmp_path / "done"
    cmd = ["python", "-m", "megastack.pretrain", "--exit-interval", "96"]
    assert bench.finished_phase(str(done), cmd, None) is None  # never ran
    done.write_text("")  # a marker from before markers held records
    assert bench.finished_phase(str(done), cmd, None) is None
    record = {"command": cmd, "source_finished_at": 17.0, "finished_at": 20.0,
              "wall_seconds": 3.0}
    done.write_text(json.dumps(record))
    assert bench.finished_phase(str(done), cmd, 17.0) == record
    # Another plan (e.g. the FLOPs budget now rounds down: 104 -> 96 iterations).
    assert bench.finished_phase(str(done), cmd[:-1] + ["104"], 17.0) is None
    # The small phase it grew from has been retrained since.
    assert bench.finished_phase(str(done), cmd, 25.0) is None
