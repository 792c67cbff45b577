"""Bad configurations fail before any training work, naming the flag and the fix."""

import subprocess
import sys
import time

import pytest

from megastack.training.arguments import build_pretrain_config, padded_vocab_size, parse_args


def config(argv):
    return build_pretrain_config(parse_args(argv), vocab_size=None)


BASE = ["--model", "tiny-4l", "--mock-data", "--train-iters", "2"]


@pytest.mark.parametrize("argv, world, needles", [
    (["--pipeline-model-parallel-size", "3"], 3,
     ["--num-layers 4", "--pipeline-model-parallel-size 3", "divides"]),
    (["--global-batch-size", "6", "--micro-batch-size", "4"], 1,
     ["--global-batch-size 6", "--micro-batch-size 4", "multiple of 4"]),
    (["--global-batch-size", "6", "--micro-batch-size", "2"], 4,
     ["--global-batch-size 6", "data-parallel size 4"]),
    (["--tensor-model-parallel-size", "8"], 8,
     ["--num-attention-heads 4", "--tensor-model-parallel-size 8"]),
    (["--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "3"], 2,
     ["--num-layers-per-virtual-pipeline-stage 3"]),
    (["--num-attention-heads", "0"], 1, ["--num-attention-heads must be >= 1, got 0"]),
    (["--num-query-groups", "0"], 1, ["--num-query-groups must be >= 1, got 0"]),
])
def test_layout_errors_name_the_flag(argv, world, needles, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    with pytest.raises(ValueError) as e:
        config(BASE + argv)
    for needle in needles:
        assert needle in str(e.value)


def test_missing_data_path_names_the_flag(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ValueError, match="--data-path"):
        config(["--model", "tiny-4l", "--train-iters", "2"])


def test_nonexistent_data_prefix_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    prefix = str(tmp_path / "corpus_text_document")
    with pytest.raises(ValueError) as e:
        config(["--model", "tiny-4l", "--train-iters", "2", "--data-path", prefix,
                "--tokenizer-type", "NullTokenizer"])
    assert prefix + ".bin" in str(e.value) and "tools/preprocess_data.py" in str(e.value)


def test_train_iters_from_tokens(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = config(["--model", "tiny-4l", "--mock-data", "--train-tokens", "4096",
                  "--global-batch-size", "8"])
    assert cfg.train.train_iters == 8  # 4096 tokens / (8 x 64)


def test_vocab_padding_does_not_depend_on_tp():
    assert padded_vocab_size(50257, 128, 1) == padded_vocab_size(50257, 128, 8) == 50304


def test_cli_fails_fast_with_exit_code_2(tmp_path):
    """No process group, model or data is built before the error."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "megastack.pretrain", "--model", "tiny-4l", "--mock-data",
         "--train-iters", "2", "--pipeline-model-parallel-size", "3"],
        capture_output=True, text=True, timeout=120, env={"WORLD_SIZE": "3", "PATH": ""},
    )
    assert proc.returncode == 2
    assert "--pipeline-model-parallel-size 3" in proc.stderr
    assert "CUDA not available" not in proc.stdout  # the runtime was never initialised
    assert time.monotonic() - start < 60
