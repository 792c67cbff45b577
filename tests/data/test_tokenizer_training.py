"""SentencePiece training: long lines, seeded sampling, and the errors users can cause."""

import json
import subprocess
import sys

import pytest

from megastack.data import tokenizer_training
from megastack.data.tokenizer_training import (MAX_SENTENCE_BYTES, TokenizerTrainingConfig,
                                               iter_training_lines, train_sentencepiece)
from tests.data.conftest import REPO, sample_docs, write_jsonl


def train_tool(*args):
    return subprocess.run([sys.executable, str(REPO / "tools" / "train_tokenizer.py"),
                           *map(str, args)], capture_output=True, text=True, timeout=300, cwd=REPO)


def test_split_long_line_keeps_pieces_under_the_limit_and_every_character():
    split_long_line = tokenizer_training.split_long_line
    words = ("Ünïcödé wörds, ☃ and 🐳 fill it. " * 40).strip()
    pieces = split_long_line(words, 100)
    assert all(len(p.encode("utf-8")) <= 100 for p in pieces)
    assert " ".join(pieces) == words
    # Sentence ends are preferred over other spaces when one is in reach.
    assert all(p.endswith(".") for p in pieces[:-1])
    # No space at all: cut between characters, never inside one (4-byte emoji).
    solid = "a" + "🐳" * 100
    pieces = split_long_line(solid, 10)
    assert "".join(pieces) == solid
    assert all(len(p.encode("utf-8")) <= 10 for p in pieces)
    assert split_long_line("short", 100) == ["short"]


def test_long_single_line_documents_train_on_all_their_text(tmp_path):
    """Documents stored as one long line (speeches, books) used to be skipped whole by
    SentencePiece; a character found only past their first 16 KiB must reach the vocabulary."""
    filler = " ".join(sample_docs(3)).replace("\n", " ")
    assert len(filler.encode("utf-8")) > MAX_SENTENCE_BYTES
    docs = [filler + " жук" * 300 for _ in range(3)] + sample_docs(2)
    src = write_jsonl(tmp_path / "long.jsonl", docs)
    lines = list(iter_training_lines([str(src)], ["text"], False))
    assert max(len(line.encode("utf-8")) for line in lines) <= MAX_SENTENCE_BYTES
    model = train_sentencepiece(TokenizerTrainingConfig(
        inputs=[str(src)], model_prefix=str(tmp_path / "sp"), vocab_size=400, num_threads=1))
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=model)
    assert sp.piece_to_id("ж") != sp.unk_id()


def test_sample_lines_is_seeded_and_uniform_in_size():
    sample_lines = tokenizer_training.sample_lines
    lines = [str(i) for i in range(1000)]
    first, seen = sample_lines(iter(lines), 100, seed=7)
    assert seen == 1000 and len(first) == 100 and len(set(first)) == 100
    assert sample_lines(iter(lines), 100, seed=7)[0] == first
    assert sample_lines(iter(lines), 100, seed=8)[0] != first
    assert sample_lines(iter(lines), 0, seed=7)[0] == lines
    assert sample_lines(iter(lines[:50]), 100, seed=7)[0] == lines[:50]


def test_same_seed_gives_the_same_model_when_input_is_sampled(tmp_path):
    # 20 documents are ~2000 lines; 300 of them are sampled. Separate processes, as two runs of
    # the tool would be (SentencePiece's own sampling differed between processes).
    src = write_jsonl(tmp_path / "in.jsonl", sample_docs(20))
    models = []
    for seed in (5, 5, 6):
        result = train_tool("--input", src, "--model-prefix", tmp_path / "tok", "--vocab-size",
                            400, "--input-sentence-size", 300, "--seed", seed, "--workers", 2)
        assert result.returncode == 0, result.stderr
        models.append((tmp_path / "tok.model").read_bytes())
    assert models[0] == models[1]
    assert models[0] != models[2]


def test_a_failed_training_keeps_the_earlier_tokenizer_and_leaves_no_files(tmp_path, monkeypatch):
    src = write_jsonl(tmp_path / "in.jsonl", sample_docs(20))
    args = ("--input", src, "--model-prefix", tmp_path / "tok", "--input-sentence-size", 0)
    assert train_tool(*args, "--vocab-size", 400).returncode == 0
    before = {n: (tmp_path / n).read_bytes() for n in ("tok.model", "tok.vocab")}
    assert train_tool(*args, "--vocab-size", 50000).returncode == 2  # too large for the text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "tok.model", "tok.vocab"]
    assert {n: (tmp_path / n).read_bytes() for n in before} == before
    # killed once SentencePiece has written its files: still the earlier tokenizer, whole
    from megastack.data import tokenizer_training as module

    def train_then_die(*a, **kw):
        real_train(*a, **kw)
        raise KeyboardInterrupt

    real_train = module._train
    monkeypatch.setattr(module, "_train", train_then_die)
    with pytest.raises(KeyboardInterrupt):
        module.train_sentencepiece(module.TokenizerTrainingConfig(
            inputs=[str(src)], model_prefix=str(tmp_path / "tok"), vocab_size=500,
            input_sentence_size=0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "tok.model", "tok.vocab"]
    assert {n: (tmp_path / n).read_bytes() for n in before} == before


def test_vocab_size_too_large_for_the_text_is_a_usage_error(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", ["hello world", "foo bar baz"])
    result = train_tool("--input", src, "--model-prefix", tmp_path / "t", "--vocab-size", 4000)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error: --vocab-size 4000" in result.stderr and "Lower --vocab-size" in result.stderr
    assert str(src) in result.stderr


def test_vocab_size_below_the_characters_says_raise_it(tmp_path):
    """SentencePiece's advice (raise it, or lower the coverage) with this tool's flag name, and
    not the "Lower --vocab-size" of the too-large case."""
    text = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 400))  # 400 distinct characters
    src = write_jsonl(tmp_path / "in.jsonl", [text, text[::-1]])
    result = train_tool("--input", src, "--model-prefix", tmp_path / "t", "--vocab-size", 300,
                        "--character-coverage", "1.0")
    assert result.returncode == 2, result.stderr
    assert "Increase vocab_size" in result.stderr and "--character-coverage option" in result.stderr
    assert "Lower --vocab-size" not in result.stderr and "--character_coverage" not in result.stderr


@pytest.mark.parametrize("content", ["\n\n  \n", json.dumps({"text": " \n "}) + "\n"])
def test_input_without_text_names_the_files(tmp_path, content):
    src = tmp_path / "blank.jsonl"
    src.write_text(content)
    result = train_tool("--input", src, "--model-prefix", tmp_path / "t", "--vocab-size", 300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"error: no text to train on in {src}" in result.stderr
    assert not list(tmp_path.glob("t.*"))
