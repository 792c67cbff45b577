"""The command-line tools: flags, exit codes, messages, and a start-up without torch."""

import json
import subprocess
import sys

import numpy as np
import pytest

from megastack.data.indexed_writer import read_index
from tests.data.conftest import NLTK_DATA, REPO, SAMPLE, null_texts, sample_docs, write_jsonl


def tool(name, *args):
    return subprocess.run([sys.executable, str(REPO / "tools" / name), *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


def test_preprocess_path_imports_neither_torch_nor_megatron():
    code = ("import sys, runpy; sys.argv=['x', '--help']\n"
            "import megastack.data.preprocessing, megastack.data.merge, "
            "megastack.data.tokenizer_training\n"
            "bad = [m for m in ('torch', 'megatron') if m in sys.modules]\n"
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_help_works_for_every_tool():
    for name in ("preprocess_data.py", "merge_datasets.py", "train_tokenizer.py"):
        result = tool(name, "--help")
        assert result.returncode == 0 and "--input" in result.stdout


def test_quickstart_pipeline_end_to_end(tmp_path):
    """train_tokenizer -> preprocess (2 workers, split sentences) -> merge, via the CLIs."""
    result = tool("train_tokenizer.py", "--input", SAMPLE, "--model-prefix", tmp_path / "tok",
                  "--vocab-size", 512, "--input-sentence-size", 3000, "--workers", 1)
    assert result.returncode == 0, result.stderr
    sample = write_jsonl(tmp_path / "sample.jsonl.gz", sample_docs(12), gz=True)
    part = write_jsonl(tmp_path / "part.jsonl", ["First sentence. Second one!", "Third."])
    for name, src in (("sample", sample), ("part", part)):
        result = tool("preprocess_data.py", "--input", src, "--output-prefix", tmp_path / name,
                      "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model",
                      tmp_path / "tok.model", "--append-eod", "--workers", 2,
                      "--split-sentences", "--nltk-data", NLTK_DATA, "--log-interval", 100)
        assert result.returncode == 0, result.stderr
        assert "tokens/s" in result.stderr and "done: " in result.stderr
    merged = tmp_path / "merged"
    result = tool("merge_datasets.py", "--input", tmp_path / "sample_text_sentence",
                  tmp_path / "part_text_sentence", "--output-prefix", merged)
    assert result.returncode == 0, result.stderr
    index = read_index(str(merged))
    assert len(index.document_indices) == 12 + 2 + 1
    assert index.dtype == np.uint16
    # The second-to-last document was split into two sentences.
    assert index.document_indices[-2] - index.document_indices[-3] == 2


def test_bad_line_exit_code_and_message(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": "1 2"}) + "\n" + '{"text": \n')
    result = tool("preprocess_data.py", "--input", src, "--output-prefix", tmp_path / "o",
                  "--tokenizer-type", "NullTokenizer", "--vocab-size", 10)
    assert result.returncode == 1
    assert f"error: {src}:2: malformed JSON" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
    result = tool("preprocess_data.py", "--input", src, "--output-prefix", tmp_path / "o",
                  "--tokenizer-type", "NullTokenizer", "--vocab-size", 10, "--skip-bad-lines")
    assert result.returncode == 0 and "skipped 1 bad lines" in result.stderr


def test_train_tokenizer_reports_bad_line(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", null_texts(3))
    with open(src, "a") as f:
        f.write('{"title": "x"}\n')
    result = tool("train_tokenizer.py", "--input", src, "--model-prefix", tmp_path / "t",
                  "--vocab-size", 300)
    assert result.returncode == 2
    assert f"{src}:4: missing key 'text'" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--tokenizer-type", "NullTokenizer"], "--vocab-size"),
    (["--tokenizer-type", "GPT2BPETokenizer"], "--vocab-file"),
    (["--tokenizer-type", "NullTokenizer", "--vocab-size", "9", "--workers", "0"], "--workers"),
])
def test_usage_errors_name_the_flag(tmp_path, args, message):
    src = write_jsonl(tmp_path / "in.jsonl", ["1"])
    result = tool("preprocess_data.py", "--input", src, "--output-prefix", tmp_path / "o", *args)
    assert result.returncode == 2 and message in result.stderr
