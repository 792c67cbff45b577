"""tools/plan.py exits 2, naming the flag, on layouts and flags the trainer would reject."""

import shlex

import pytest

from megastack.config import ModelConfig, ParallelConfig
from megastack.planning import PhaseLayout, validate_layout
from tests.scripts import load_script


@pytest.fixture
def plan_tool():
    return load_script("tools/plan.py")


def run(plan_tool, capsys, *argv):
    code = plan_tool.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err


SP_LOCAL = ("--model", "tiny-2l", "--tensor-model-parallel-size", "2", "--sequence-parallel",
            "--nproc-per-node", "2")


def test_sequence_parallel_needs_transformer_engine(plan_tool, capsys):
    code, err = run(plan_tool, capsys, *SP_LOCAL)
    assert code == 2
    assert "--sequence-parallel" in err and "--transformer-impl transformer_engine" in err
    code, err = run(plan_tool, capsys, *SP_LOCAL, "--transformer-impl", "transformer_engine")
    assert code == 0, err


def test_sequence_parallel_checked_for_the_grown_phase(plan_tool, capsys):
    code, err = run(plan_tool, capsys, "--model", "tiny-2l", "--grow-to", "tiny-8l", "--nproc-per-node", "2",
                    "--sequence-parallel", "--target-tensor-parallel-size", "2")
    assert code == 2
    assert "--target-tensor-parallel-size 2" in err and "--transformer-impl transformer_engine" in err


def test_validate_layout_rejects_sequence_parallel_on_torch_norms():
    model = ModelConfig.from_name("tiny-8l")
    parallel = ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True)
    with pytest.raises(ValueError, match="--sequence-parallel"):
        validate_layout(PhaseLayout(model, parallel, world_size=2, transformer_impl="local"))
    validate_layout(PhaseLayout(model, parallel, world_size=2, transformer_impl="transformer_engine"))


def test_docstring_single_phase_example_is_accepted(plan_tool, capsys):
    doc = plan_tool.__doc__
    block = doc.split("One training phase:", 1)[1].split("\n\n", 1)[0]
    argv = shlex.split(block.replace("\\\n", " "))
    assert argv[:2] == ["python", "tools/plan.py"]
    code, err = run(plan_tool, capsys, *argv[2:])
    assert code == 0, err


@pytest.mark.parametrize("stacking", ["garbage", "0-1*2", "0-2*4"])
def test_stacking_list_is_validated(plan_tool, capsys, stacking):
    code, err = run(plan_tool, capsys, "--model", "tiny-2l", "--grow-to", "tiny-8l", "--stacking-list", stacking)
    assert code == 2
    assert "--stacking-list" in err


def test_valid_stacking_list_is_accepted(plan_tool, capsys):
    code, err = run(plan_tool, capsys, "--model", "tiny-2l", "--grow-to", "tiny-8l", "--stacking-list", "0-1*4")
    assert code == 0, err


@pytest.mark.parametrize("flag,value,grow", [
    ("--tensor-model-parallel-size", "0", False),
    ("--pipeline-model-parallel-size", "0", False),
    ("--target-tensor-parallel-size", "0", True),
    ("--target-pipeline-parallel-size", "0", True),
    ("--target-micro-batch-size", "0", True),
    ("--gpu-memory-gib", "-1", False),
    ("--gpu-memory-gib", "0", False),
])
def test_non_positive_sizes_name_the_flag(plan_tool, capsys, flag, value, grow):
    argv = ["--model", "tiny-2l", flag, value]
    if grow:
        argv += ["--grow-to", "tiny-8l"]
    code, err = run(plan_tool, capsys, *argv)
    assert code == 2
    assert flag in err


def test_grow_to_a_preset_of_another_width_is_refused(plan_tool, capsys):
    """grow_checkpoint cannot stack 8L4096H into llama3-8b (other FFN, fewer query groups,
    another vocabulary); the plan printed it as a depth growth."""
    code, err = run(plan_tool, capsys, "--model", "8L4096H", "--grow-to", "llama3-8b",
                    "--stacking-list", "0-7*4")
    assert code == 2
    assert "--grow-to llama3-8b differs from the small model beyond depth" in err
    assert "--num-query-groups: 32 vs 8" in err and "--ffn-hidden-size: 11008 vs 14336" in err


def test_small_tokens_must_leave_tokens_for_the_grown_model(plan_tool, capsys):
    code, err = run(plan_tool, capsys, "--model", "tiny-2l", "--grow-to", "tiny-8l",
                    "--small-train-tokens", "400B", "--train-tokens", "300e9")
    assert code == 2 and "--small-train-tokens 4e+11 leaves nothing of --train-tokens" in err


def test_grown_phase_keeps_the_global_batch_by_default(plan_tool, capsys):
    code = plan_tool.main(["--model", "tiny-2l", "--grow-to", "tiny-8l", "--nproc-per-node", "8",
                           "--target-tensor-parallel-size", "2", "--target-pipeline-parallel-size",
                           "2"])
    out = capsys.readouterr().out
    assert code == 0
    # Phase 1: DP 8 x 1 micro-batch; phase 3: DP 2 x 4 micro-batches, the same 8 sequences.
    assert out.count("= global 8 sequences") == 2, out
