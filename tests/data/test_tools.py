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
        # Pool workers inherit the SIGTERM handler; Pool.terminate must still stop them quietly.
        assert "Traceback" not in result.stderr
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


def test_output_under_a_file_is_a_usage_error(tmp_path):
    """Was a FileExistsError traceback from makedirs."""
    src = write_jsonl(tmp_path / "in.jsonl", ["some text to read"])
    (tmp_path / "afile").write_text("")
    for name, flags in (("preprocess_data.py", ["--output-prefix", tmp_path / "afile" / "o",
                                                "--tokenizer-type", "NullTokenizer",
                                                "--vocab-size", "300"]),
                        ("train_tokenizer.py", ["--model-prefix", tmp_path / "afile" / "t",
                                                "--vocab-size", "300"])):
        result = tool(name, "--input", src, *flags)
        assert result.returncode == 2, (name, result.stderr)
        assert "afile is a file, not a directory" in result.stderr, (name, result.stderr)
        assert "Traceback" not in result.stderr


# Runs a tool with one of its steps slowed down and announced on stderr, so a test can signal
# it mid-run: python -c SLOWED module:Class.method tools/x.py args...
SLOWED = """
import importlib, runpy, sys, time
import megastack.data.preprocessing
megastack.data.preprocessing.BATCH_LINES = 1
module, _, attr = sys.argv[1].partition(":")
owner_name, method = attr.split(".")
owner = getattr(importlib.import_module(module), owner_name)
step = getattr(owner, method)
def slowed(*args, **kwargs):
    print("slow step", file=sys.stderr, flush=True)
    time.sleep(0.1)
    return step(*args, **kwargs)
setattr(owner, method, slowed)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def sigterm_mid_run(target, name, *args):
    """Start the tool, send SIGTERM once the slowed step has run, return (exit status, stderr)."""
    import select
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-c", SLOWED, target, str(REPO / "tools" / name),
                             *map(str, args)], stderr=subprocess.PIPE, text=True, cwd=REPO)
    seen = ""
    deadline = time.monotonic() + 120
    try:
        while "slow step" not in seen:
            assert time.monotonic() < deadline and proc.poll() is None, seen
            if select.select([proc.stderr], [], [], 1)[0]:
                seen += proc.stderr.readline()
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, seen + rest


def test_sigterm_raises_in_the_block_only():
    import os
    import signal
    import time

    from megastack.data.termination import Terminated, sigterm_raises

    def previous(signum, frame):
        pass

    saved = signal.signal(signal.SIGTERM, previous)
    try:
        with pytest.raises(Terminated):
            with sigterm_raises():
                # A forked child (a pool worker) keeps the handler from before the block: a
                # Python handler can miss a SIGTERM that lands just before a blocking call,
                # and Pool.terminate would then wait for that worker forever.
                child = os.fork()
                if child == 0:
                    os._exit(0 if signal.getsignal(signal.SIGTERM) is previous else 1)
                assert os.waitpid(child, 0)[1] == 0
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)  # the handler raises at once; this is never waited out
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, saved)


def test_run_tool_exit_statuses_and_messages(capsys):
    from megastack.data.termination import Terminated, run_tool

    class BadLine(ValueError):
        pass

    def fail(err):
        def work():
            raise err
        return work

    statuses = ((BadLine, 1), (ValueError, 2), (OSError, 2))
    assert run_tool(lambda: "done", cleaned_up="x", error_statuses=statuses) == (0, "done")
    cases = [(BadLine("in.jsonl:3: not JSON"), 1, "error: in.jsonl:3: not JSON"),
             (ValueError("--split: bad"), 2, "error: --split: bad"),
             (FileExistsError(17, "File exists", "a.tmp", None, "out.bin"), 2,
              "error: out.bin: File exists"),
             (KeyboardInterrupt(), 130, "error: interrupted; partial files were removed"),
             (Terminated(), 143, "error: terminated (SIGTERM); partial files were removed")]
    for err, status, message in cases:
        assert run_tool(fail(err), cleaned_up="partial files were removed",
                        error_statuses=statuses) == (status, None)
        assert capsys.readouterr().err.strip() == message
    # Not a user error: the traceback is what a bug report needs.
    with pytest.raises(OSError):
        run_tool(fail(OSError("disk")), cleaned_up="x")
    with pytest.raises(RuntimeError):
        run_tool(fail(RuntimeError("bug")), cleaned_up="x", error_statuses=statuses)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_during_preprocess_leaves_no_files(tmp_path, workers):
    src = write_jsonl(tmp_path / "in.jsonl", null_texts(200))
    out = tmp_path / "out"
    status, stderr = sigterm_mid_run(
        "megastack.data.document_encoder:DocumentEncoder.encode_lines", "preprocess_data.py",
        "--input", src, "--output-prefix", out / "ds", "--tokenizer-type", "NullTokenizer",
        "--vocab-size", 70000, "--workers", workers, "--log-interval", 1)
    assert status == 143, stderr
    assert "error: terminated (SIGTERM)" in stderr and "Traceback" not in stderr
    assert list(out.iterdir()) == []


def test_sigterm_during_merge_leaves_no_files(tmp_path):
    from megastack.data.indexed_writer import IndexedDatasetWriter

    parts = []
    for i in range(5):
        with IndexedDatasetWriter(str(tmp_path / f"part{i}"), np.uint16) as writer:
            writer.add_document([1, 2, 3], [3])
            writer.finalize()
        parts.append(tmp_path / f"part{i}")
    out = tmp_path / "out"
    status, stderr = sigterm_mid_run(
        "megastack.data.indexed_writer:IndexedDatasetWriter.add_index", "merge_datasets.py",
        "--input", *parts, "--output-prefix", out / "merged")
    assert status == 143, stderr
    assert "error: terminated (SIGTERM)" in stderr and "Traceback" not in stderr
    assert not out.exists() or list(out.iterdir()) == []


def test_swapped_gpt2_files_are_a_usage_error(tmp_path, tiny_gpt2_files):
    vocab, merges = tiny_gpt2_files
    src = write_jsonl(tmp_path / "in.jsonl", ["hello"])
    result = tool("preprocess_data.py", "--input", src, "--output-prefix", tmp_path / "o",
                  "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", merges,
                  "--merge-file", vocab)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: --vocab-file {merges}: not a JSON token -> id table" in result.stderr


def test_merge_refuses_a_truncated_bin(tmp_path):
    from megastack.data.indexed_writer import IndexedDatasetWriter

    for name in ("a", "b"):
        with IndexedDatasetWriter(str(tmp_path / name), np.uint16) as writer:
            writer.add_document(list(range(100)), [100])
            writer.finalize()
    bin_b = tmp_path / "b.bin"
    bin_b.write_bytes(bin_b.read_bytes()[:150])
    result = tool("merge_datasets.py", "--input", tmp_path / "a", tmp_path / "b",
                  "--output-prefix", tmp_path / "m")
    assert result.returncode == 2
    assert f"error: {bin_b} has 150 bytes but {tmp_path / 'b.idx'} describes 200" \
        in result.stderr
    assert not list(tmp_path.glob("m.*"))


def test_duplicate_json_keys_are_refused_before_any_work(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": "1 2"}) + "\n")
    result = tool("preprocess_data.py", "--input", src, "--output-prefix", tmp_path / "o",
                  "--tokenizer-type", "NullTokenizer", "--vocab-size", 10,
                  "--json-keys", "text", "text")
    assert result.returncode == 2
    assert "--json-keys names text more than once" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_preprocess_accepts_megatron_partitions_flags(tmp_path):
    """Megatron-LM scripts pass --partitions and --keep-sequential-samples; they were
    'unrecognized arguments'. The output does not change."""
    src = write_jsonl(tmp_path / "in.jsonl", null_texts(30))
    common = ["--input", src, "--tokenizer-type", "NullTokenizer", "--vocab-size", 70000,
              "--append-eod", "--log-interval", 0]
    plain = tool("preprocess_data.py", *common, "--output-prefix", tmp_path / "plain")
    flagged = tool("preprocess_data.py", *common, "--output-prefix", tmp_path / "flagged",
                   "--partitions", 2, "--keep-sequential-samples", "--workers", 2)
    assert plain.returncode == 0 and flagged.returncode == 0, flagged.stderr
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"plain_text_document{ext}").read_bytes() == \
            (tmp_path / f"flagged_text_document{ext}").read_bytes()
    bad = tool("preprocess_data.py", *common, "--output-prefix", tmp_path / "bad",
               "--partitions", 0)
    assert bad.returncode == 2 and "--partitions must be >= 1" in bad.stderr


def test_preprocess_hf_special_tokens_flags(tmp_path, hf_bos_tokenizer_dir):
    """Special tokens (here a Llama-style BOS) are written by default, as Megatron-LM does;
    --tokenizer-hf-no-include-special-tokens leaves them out."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(f"{hf_bos_tokenizer_dir}/tokenizer.json")
    bos, eos = raw.token_to_id("<s>"), raw.token_to_id("</s>")
    src = write_jsonl(tmp_path / "in.jsonl", ["hello world", "the cat"])
    plain = [raw.encode(t, add_special_tokens=False).ids + [eos]
             for t in ("hello world", "the cat")]
    cases = {(): [[bos] + p for p in plain],
             ("--tokenizer-hf-include-special-tokens",): [[bos] + p for p in plain],
             ("--tokenizer-hf-no-include-special-tokens",): plain}
    for i, (flags, expected) in enumerate(cases.items()):
        result = tool("preprocess_data.py", "--input", src, "--output-prefix", tmp_path / f"o{i}",
                      "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
                      hf_bos_tokenizer_dir, "--append-eod", *flags)
        assert result.returncode == 0, result.stderr
        prefix = str(tmp_path / f"o{i}_text_document")
        index = read_index(prefix)
        tokens = np.fromfile(prefix + ".bin", dtype=index.dtype).tolist()
        assert tokens == [t for doc in expected for t in doc], flags


def _dataset(prefix):
    from megastack.data.indexed_writer import IndexedDatasetWriter

    with IndexedDatasetWriter(str(prefix), np.uint16) as writer:
        writer.add_document([1, 2, 3], [3])
        writer.finalize()


def test_merge_directory_refuses_incomplete_datasets(tmp_path):
    """A .idx without its .bin (or the reverse) used to be skipped: 'merged 1 datasets'."""
    parts = tmp_path / "parts"
    parts.mkdir()
    for name in ("a", "b", "c"):
        _dataset(parts / name)
    (parts / "b.bin").unlink()
    (parts / "c.idx").unlink()
    result = tool("merge_datasets.py", "--input", parts, "--output-prefix", tmp_path / "m")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{parts / 'b.idx'} without its .bin" in result.stderr
    assert f"{parts / 'c.bin'} without its .idx" in result.stderr
    assert not list(tmp_path.glob("m.*"))


def test_merge_output_path_errors_are_one_line(tmp_path):
    """Were FileExistsError / IsADirectoryError tracebacks."""
    _dataset(tmp_path / "a")
    (tmp_path / "afile").write_text("")
    result = tool("merge_datasets.py", "--input", tmp_path / "a",
                  "--output-prefix", tmp_path / "afile" / "m")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: --output-prefix {tmp_path / 'afile' / 'm'}: {tmp_path / 'afile'} is a file, " \
        "not a directory" in result.stderr
    (tmp_path / "out" / "m.bin").mkdir(parents=True)  # an OSError only the rename meets
    result = tool("merge_datasets.py", "--input", tmp_path / "a",
                  "--output-prefix", tmp_path / "out" / "m")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {tmp_path / 'out' / 'm.bin'}: Is a directory"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.bin"]
