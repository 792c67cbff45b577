import json
import os

import numpy as np
import pytest

from megastack.data import preprocessing as preprocess_module
from megastack.data.indexed_writer import read_index
from megastack.data.jsonl_reader import BadInputError
from megastack.data.preprocessing import PreprocessConfig, preprocess
from tests.data.conftest import (NLTK_DATA, TOKENIZER_KINDS, TRICKY_TEXTS, long_document,
                                 null_texts, sample_docs, write_jsonl)


def read_documents(prefix):
    """[(tokens of the document, its sequence lengths)] straight from the files."""
    index = read_index(prefix)
    data = np.fromfile(prefix + ".bin", dtype=index.dtype)
    starts = np.concatenate([[0], np.cumsum(index.sequence_lengths, dtype=np.int64)])
    docs = []
    for first, last in zip(index.document_indices[:-1], index.document_indices[1:]):
        docs.append((data[starts[first]:starts[last]].tolist(),
                     index.sequence_lengths[first:last].tolist()))
    return docs


def corpus_for(kind):
    if kind == "null":
        return null_texts(40)
    return TRICKY_TEXTS + sample_docs(6) + [long_document(120_000)]


def run(tmp_path, spec, inputs, **kwargs):
    config = PreprocessConfig(inputs=[str(p) for p in inputs],
                              output_prefix=str(tmp_path / "out" / "ds"), tokenizer=spec,
                              **kwargs)
    return preprocess(config, report=lambda line: None)


def files_in(directory):
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
@pytest.mark.parametrize("append_eod", [False, True])
def test_round_trip_document_level(tmp_path, tokenizer_spec_for, kind, append_eod):
    spec = tokenizer_spec_for(kind)
    docs = corpus_for(kind)
    src = write_jsonl(tmp_path / "in.jsonl.gz", docs, gz=True)
    result = run(tmp_path, spec, [src], append_eod=append_eod)
    assert result.output_prefixes == [str(tmp_path / "out" / "ds_text_document")]
    tok = spec.build()
    written = read_documents(result.output_prefixes[0])
    assert len(written) == len(docs)
    for text, (tokens, lengths) in zip(docs, written):
        expected = tok.tokenize(text) + ([tok.eod] if append_eod else [])
        assert tokens == expected
        assert lengths == [len(expected)]
    assert read_index(result.output_prefixes[0]).dtype == (
        np.int32 if tok.vocab_size >= 65500 else np.uint16)
    assert result.progress.tokens == sum(len(t) for t, _ in written)


def punkt_reference(keep_newlines):
    """Sentences from nltk's own loader (not megastack's), with Megatron's newline variant."""
    import nltk
    from nltk.tokenize.punkt import PunktSentenceTokenizer, PunktTokenizer

    nltk.data.path.insert(0, str(NLTK_DATA))
    base = PunktTokenizer("english")
    if not keep_newlines:
        return base.tokenize
    from megastack.data.sentence_splitter import _newline_keeping_lang_vars
    return PunktSentenceTokenizer(base._params, lang_vars=_newline_keeping_lang_vars()).tokenize


@pytest.mark.parametrize("kind", ["gpt2", "sentencepiece"])
@pytest.mark.parametrize("keep_newlines", [False, True])
def test_round_trip_split_sentences(tmp_path, tokenizer_spec_for, kind, keep_newlines):
    spec = tokenizer_spec_for(kind)
    docs = TRICKY_TEXTS + sample_docs(3)
    src = write_jsonl(tmp_path / "in.jsonl", docs)
    result = run(tmp_path, spec, [src], split_sentences=True, keep_newlines=keep_newlines,
                 nltk_data=str(NLTK_DATA), append_eod=True)
    assert result.output_prefixes[0].endswith("ds_text_sentence")
    tok, split = spec.build(), punkt_reference(keep_newlines)
    for text, (tokens, lengths) in zip(docs, read_documents(result.output_prefixes[0])):
        sentences = [ids for ids in map(tok.tokenize, split(text)) if ids]
        sentences[-1] = sentences[-1] + [tok.eod]
        assert lengths == [len(s) for s in sentences]
        assert tokens == [t for s in sentences for t in s]
    if keep_newlines:
        # Newlines survive: the newline-keeping splitter drops only outer whitespace.
        text = TRICKY_TEXTS[3]
        assert "".join(split(text)) == text.strip()


def test_split_sentences_without_punkt_is_a_clear_error(tmp_path, tokenizer_spec_for,
                                                        monkeypatch):
    monkeypatch.delenv("NLTK_DATA", raising=False)
    src = write_jsonl(tmp_path / "in.jsonl", ["a. b."])
    with pytest.raises(ValueError, match="--nltk-data"):
        run(tmp_path, tokenizer_spec_for("gpt2"), [src], split_sentences=True)
    monkeypatch.setenv("NLTK_DATA", str(NLTK_DATA))
    assert run(tmp_path, tokenizer_spec_for("gpt2"), [src], split_sentences=True)


def test_one_and_two_workers_write_identical_files(tmp_path, tokenizer_spec_for, monkeypatch):
    # Small batches so two workers interleave many of them.
    monkeypatch.setattr(preprocess_module, "BATCH_LINES", 3)
    docs = sample_docs(30) + TRICKY_TEXTS
    src = [write_jsonl(tmp_path / "a.jsonl.gz", docs[:20], gz=True),
           write_jsonl(tmp_path / "b.jsonl", docs[20:])]
    outputs = {}
    for workers in (1, 2):
        config = PreprocessConfig(inputs=[str(p) for p in src],
                                  tokenizer=tokenizer_spec_for("gpt2"),
                                  output_prefix=str(tmp_path / f"w{workers}"), workers=workers,
                                  append_eod=True)
        prefix = preprocess(config, report=lambda line: None).output_prefixes[0]
        outputs[workers] = [open(prefix + ext, "rb").read() for ext in (".bin", ".idx")]
    assert outputs[1] == outputs[2]
    assert len(read_documents(str(tmp_path / "w2_text_document"))) == len(docs)


def test_inputs_by_glob_in_sorted_order_and_multiple_keys(tmp_path, tokenizer_spec_for):
    for name, words in (("b.jsonl", ["2 3", "4"]), ("a.jsonl", ["1"])):
        with open(tmp_path / name, "w") as f:
            for w in words:
                f.write(json.dumps({"text": w, "title": w + " 9"}) + "\n")
    result = run(tmp_path, tokenizer_spec_for("null"), [tmp_path / "*.jsonl"],
                 json_keys=("text", "title"))
    text, title = (read_documents(p) for p in result.output_prefixes)
    assert [t for t, _ in text] == [[1], [2, 3], [4]]
    assert [t for t, _ in title] == [[1, 9], [2, 3, 9], [4, 9]]


def test_blank_lines_are_ignored_and_counted(tmp_path, tokenizer_spec_for):
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "1 2"}\n\n   \n{"text": "3"}\n')
    result = run(tmp_path, tokenizer_spec_for("null"), [src])
    assert [t for t, _ in read_documents(result.output_prefixes[0])] == [[1, 2], [3]]
    assert result.progress.blank_lines == 2


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
@pytest.mark.parametrize("workers", [1, 2])
def test_documents_without_tokens_are_written_empty_and_counted(tmp_path, tokenizer_spec_for,
                                                                 kind, workers):
    """Megatron's rule: no tokens, no eod; its builder still adds the document, with zero
    sequences. Whitespace the tokenizer keeps is an ordinary document."""
    spec = tokenizer_spec_for(kind)
    tok = spec.build()
    real = null_texts(2) if kind == "null" else sample_docs(2)
    docs = [real[0], "", "   ", " \n\t", [], ["", ""], real[1], ""]
    src = write_jsonl(tmp_path / "in.jsonl", docs)
    result = run(tmp_path, spec, [src], append_eod=True, workers=workers)
    ids = [[i for s in ([d] if isinstance(d, str) else d) for i in tok.tokenize(s)]
           for d in docs]
    written = read_documents(result.output_prefixes[0])
    assert written == [(t + [tok.eod], [len(t) + 1]) if t else ([], []) for t in ids]
    if kind in ("gpt2", "huggingface"):
        assert ids[2]  # byte-level BPE has tokens for spaces, as in Megatron
    empty = sum(not t for t in ids)
    assert empty >= 4  # "", [], ["", ""] and the last "" have no tokens with any tokenizer
    assert result.progress.documents == len(docs)
    assert result.progress.empty_documents == empty
    assert f"{empty} empty documents (no tokens)" in result.summary


@pytest.mark.parametrize("workers", [1, 2])
def test_an_empty_value_keeps_documents_aligned_across_keys(tmp_path, tokenizer_spec_for,
                                                            workers):
    """An empty title used to drop the document from the title dataset only, so document i of
    one key's dataset was no longer document i of the other's."""
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in (
        {"text": "1 2", "title": "7"}, {"text": "3", "title": ""}, {"text": "", "title": "8 9"},
        {"text": "4", "title": "5"})))
    result = run(tmp_path, tokenizer_spec_for("null"), [src], json_keys=("text", "title"),
                 workers=workers)
    text, title = (read_documents(p) for p in result.output_prefixes)
    assert [t for t, _ in text] == [[1, 2], [3], [], [4]]
    assert [t for t, _ in title] == [[7], [], [8, 9], [5]]
    assert read_index(result.output_prefixes[1]).document_indices.tolist() == [0, 1, 1, 2, 3]
    assert result.progress.documents == 4 and result.progress.empty_documents == 2


def test_only_empty_documents_is_an_error_naming_them(tmp_path, tokenizer_spec_for):
    src = write_jsonl(tmp_path / "in.jsonl", ["", " "])
    with pytest.raises(BadInputError, match="2 documents have no tokens"):
        run(tmp_path, tokenizer_spec_for("null"), [src])
    assert files_in(tmp_path / "out") == []


BAD_LINES = {
    "malformed JSON": (b'{"text": "1 2"\n', "malformed JSON"),
    "missing key": (b'{"body": "1 2"}\n', "missing key 'text'"),
    "invalid UTF-8": (b'{"text": "1 \xff 2"}\n', "invalid UTF-8"),
    "not an object": (b'[1, 2]\n', "expected a JSON object"),
    "not text": (b'{"text": 12}\n', "holds int, not text"),
    "tokenizer rejects": (b'{"text": "1 x"}\n', "tokenizer failed"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
@pytest.mark.parametrize("workers", [1, 2])
def test_bad_line_stops_with_file_line_and_leaves_no_output(tmp_path, tokenizer_spec_for,
                                                            case, workers):
    bad, reason = BAD_LINES[case]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"text": "1 2"}\n' * 5 + bad + b'{"text": "3"}\n')
    with pytest.raises(BadInputError) as err:
        run(tmp_path, tokenizer_spec_for("null"), [src], workers=workers)
    assert f"{src}:6: " in str(err.value)
    assert reason in str(err.value)
    assert files_in(tmp_path / "out") == []


def test_malformed_json_message_does_not_double_at(tmp_path, tokenizer_spec_for):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"text": "1\x01 2"}\n')
    with pytest.raises(BadInputError) as err:
        run(tmp_path, tokenizer_spec_for("null"), [src])
    assert "malformed JSON: Invalid control character at column 12" in str(err.value)
    assert "at at" not in str(err.value)


def test_skip_bad_lines_skips_and_counts(tmp_path, tokenizer_spec_for):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(bad for bad, _ in BAD_LINES.values()) + b'{"text": "7 8"}\n')
    result = run(tmp_path, tokenizer_spec_for("null"), [src], skip_bad_lines=True)
    assert [t for t, _ in read_documents(result.output_prefixes[0])] == [[7, 8]]
    assert result.progress.bad_lines == len(BAD_LINES)
    assert f"skipped {len(BAD_LINES)} bad lines" in result.summary
    assert [b.line_number for b in result.bad_lines] == list(range(1, len(BAD_LINES) + 1))


@pytest.mark.parametrize("workers", [1, 2])
def test_truncated_gzip_is_reported(tmp_path, tokenizer_spec_for, workers):
    rng = np.random.default_rng(0)  # incompressible enough that the cut lands mid-stream
    docs = [" ".join(map(str, rng.integers(0, 60000, 3000))) for _ in range(20)]
    src = write_jsonl(tmp_path / "in.jsonl.gz", docs, gz=True)
    src.write_bytes(src.read_bytes()[:-2000])
    with pytest.raises(BadInputError, match=f"{src}:\\d+: cannot read compressed input"):
        run(tmp_path, tokenizer_spec_for("null"), [src], workers=workers)
    assert files_in(tmp_path / "out") == []


def test_missing_input_and_no_documents(tmp_path, tokenizer_spec_for):
    with pytest.raises(ValueError, match="no such file"):
        run(tmp_path, tokenizer_spec_for("null"), [tmp_path / "nope.jsonl"])
    with pytest.raises(ValueError, match="matches no file"):
        run(tmp_path, tokenizer_spec_for("null"), [tmp_path / "*.jsonl"])
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(BadInputError, match="no documents"):
        run(tmp_path, tokenizer_spec_for("null"), [tmp_path / "empty.jsonl"])
    assert files_in(tmp_path / "out") == []


def test_directories_are_not_inputs(tmp_path, tokenizer_spec_for):
    write_jsonl(tmp_path / "a.jsonl", ["1 2"])
    (tmp_path / "b.jsonl").mkdir()  # a directory the glob matches
    result = run(tmp_path, tokenizer_spec_for("null"), [tmp_path / "*.jsonl"])
    assert [t for t, _ in read_documents(result.output_prefixes[0])] == [[1, 2]]
    with pytest.raises(ValueError, match="matches no file \\(only directories\\)"):
        run(tmp_path, tokenizer_spec_for("null"), [tmp_path / "b.*"])
    with pytest.raises(ValueError, match=f"--input '{tmp_path}/' is a directory; name its "
                                         f"files, e.g. --input '{tmp_path}/\\*.jsonl\\*'"):
        run(tmp_path, tokenizer_spec_for("null"), [f"{tmp_path}/"])


def test_duplicate_json_keys_are_refused(tmp_path, tokenizer_spec_for):
    src = write_jsonl(tmp_path / "in.jsonl", ["1 2"])
    with pytest.raises(ValueError, match="--json-keys text text: each key may appear once"):
        run(tmp_path, tokenizer_spec_for("null"), [src], json_keys=("text", "text"))
    assert files_in(tmp_path / "out") == []


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_run_leaves_no_files(tmp_path, tokenizer_spec_for, monkeypatch, workers):
    monkeypatch.setattr(preprocess_module, "BATCH_LINES", 2)
    src = write_jsonl(tmp_path / "in.jsonl", null_texts(50))

    def interrupt(line):
        raise KeyboardInterrupt

    config = PreprocessConfig(inputs=[str(src)], output_prefix=str(tmp_path / "out" / "ds"),
                              tokenizer=tokenizer_spec_for("null"), workers=workers,
                              log_interval=10)
    with pytest.raises(KeyboardInterrupt):
        preprocess(config, report=interrupt)
    assert files_in(tmp_path / "out") == []


def test_progress_lines(tmp_path, tokenizer_spec_for):
    src = write_jsonl(tmp_path / "in.jsonl.gz", null_texts(30), gz=True)
    lines = []
    config = PreprocessConfig(inputs=[str(src)], output_prefix=str(tmp_path / "ds"),
                              tokenizer=tokenizer_spec_for("null"), log_interval=1)
    preprocess_module.BATCH_LINES, saved = 10, preprocess_module.BATCH_LINES
    try:
        preprocess(config, report=lines.append)
    finally:
        preprocess_module.BATCH_LINES = saved
    assert len(lines) == 4  # one per batch of 10 documents, then the summary
    for word in ("docs", "tokens", "MB/s", "tokens/s", "ETA"):
        assert word in lines[0]
    assert lines[-1].startswith("done: 30 docs")
