"""What megatron-core itself sees: file format, tokenizer base class, GPT datasets.

One module so megatron-core (seconds to import) loads once for all of them.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from megastack.data.indexed_writer import IndexedDatasetWriter, optimal_token_dtype
from megastack.data.merge import merge_datasets
from megastack.data.preprocessing import PreprocessConfig, preprocess
from tests.data.conftest import REPO, null_texts, sample_docs, write_jsonl

megatron_indexed = pytest.importorskip("megatron.core.datasets.indexed_dataset")


@pytest.fixture(scope="module")
def gpt2_dataset(tmp_path_factory, tokenizer_spec_for_module):
    out = tmp_path_factory.mktemp("ds")
    src = write_jsonl(out / "in.jsonl", sample_docs(40))
    config = PreprocessConfig(inputs=[str(src)], output_prefix=str(out / "corpus"),
                              tokenizer=tokenizer_spec_for_module("gpt2"), append_eod=True)
    return preprocess(config, report=lambda line: None).output_prefixes[0]


@pytest.fixture(scope="module")
def tokenizer_spec_for_module(tiny_gpt2_files):
    from megastack.data.tokenizers import TokenizerSpec

    def make(kind):
        assert kind == "gpt2"
        return TokenizerSpec("GPT2BPETokenizer", vocab_file=tiny_gpt2_files[0],
                             merge_file=tiny_gpt2_files[1])
    return make


def random_documents(seed, n, vocab):
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        lengths = rng.integers(1, 50, size=rng.integers(1, 4)).tolist()
        docs.append((rng.integers(0, vocab, size=sum(lengths)).tolist(), lengths))
    return docs


@pytest.mark.parametrize("vocab", [1000, 70000])
def test_writer_is_byte_identical_to_megatron_builder(tmp_path, vocab):
    import torch

    dtype = optimal_token_dtype(vocab)
    assert dtype == megatron_indexed.DType.optimal_dtype(vocab)
    parts = [random_documents(seed, 30, vocab) for seed in (1, 2)]
    for name, docs in zip(("a", "b"), parts):
        ours = IndexedDatasetWriter(str(tmp_path / f"ours_{name}"), dtype)
        theirs = megatron_indexed.IndexedDatasetBuilder(str(tmp_path / f"mega_{name}.bin"), dtype)
        for tokens, lengths in docs:
            ours.add_document(tokens, lengths)
            theirs.add_document(torch.tensor(tokens), lengths)
        ours.finalize()
        theirs.finalize(str(tmp_path / f"mega_{name}.idx"))
    merged = merge_datasets([str(tmp_path / "ours_a"), str(tmp_path / "ours_b")],
                            str(tmp_path / "ours_ab"))
    builder = megatron_indexed.IndexedDatasetBuilder(str(tmp_path / "mega_ab.bin"), dtype)
    for name in ("a", "b"):
        builder.add_index(str(tmp_path / f"mega_{name}"))
    builder.finalize(str(tmp_path / "mega_ab.idx"))
    for ours, theirs in (("ours_a", "mega_a"), ("ours_b", "mega_b"), (merged, "mega_ab")):
        for ext in (".bin", ".idx"):
            assert (tmp_path / (os.path.basename(ours) + ext)).read_bytes() == \
                (tmp_path / (theirs + ext)).read_bytes(), ours + ext


def test_megatron_indexed_dataset_reads_preprocessed_documents(gpt2_dataset, tiny_gpt2_files):
    from megastack.data.tokenizers import build_text_tokenizer

    tok = build_text_tokenizer("GPT2BPETokenizer", vocab_file=tiny_gpt2_files[0],
                               merge_file=tiny_gpt2_files[1])
    dataset = megatron_indexed.IndexedDataset(gpt2_dataset)
    docs = sample_docs(40)
    assert len(dataset) == len(docs) and len(dataset.document_indices) == len(docs) + 1
    for i in (0, 17, 39):
        assert dataset[i].tolist() == tok.tokenize(docs[i]) + [tok.eod]


def test_merged_dataset_is_the_concatenation(tmp_path, tokenizer_spec_for):
    prefixes = []
    for i, texts in enumerate((null_texts(7, seed=1), null_texts(5, seed=2), null_texts(3, 3))):
        src = write_jsonl(tmp_path / f"part{i}.jsonl", texts)
        config = PreprocessConfig(inputs=[str(src)], output_prefix=str(tmp_path / f"part{i}"),
                                  tokenizer=tokenizer_spec_for("null"), append_eod=True)
        prefixes += preprocess(config, report=lambda line: None).output_prefixes
    merged = megatron_indexed.IndexedDataset(merge_datasets(prefixes, str(tmp_path / "all")))
    parts = [megatron_indexed.IndexedDataset(p) for p in prefixes]
    expected = [part[i].tolist() for part in parts for i in range(len(part))]
    assert [merged[i].tolist() for i in range(len(merged))] == expected
    assert (tmp_path / "all.bin").read_bytes() == b"".join(
        (tmp_path / f"part{i}_text_document.bin").read_bytes() for i in range(3))
    assert merged.document_indices.tolist() == list(range(len(expected) + 1))


def test_merge_refuses_mixed_dtypes_and_missing_parts(tmp_path):
    for name, dtype in (("small", np.uint16), ("big", np.int32)):
        with IndexedDatasetWriter(str(tmp_path / name), dtype) as writer:
            writer.add_document([1, 2], [2])
            writer.finalize()
    with pytest.raises(ValueError, match="different vocabulary"):
        merge_datasets([str(tmp_path / "small"), str(tmp_path / "big")], str(tmp_path / "m"))
    assert not (tmp_path / "m.idx").exists() and not (tmp_path / "m.bin").exists()
    with pytest.raises(ValueError, match="nope.bin does not exist"):
        merge_datasets([str(tmp_path / "small"), str(tmp_path / "nope")], str(tmp_path / "m"))


def test_empty_documents_match_megatron_and_train(tmp_path, tokenizer_spec_for_module,
                                                 megatron_gpt2):
    """Megatron's builder adds an empty text as a document of zero sequences, for every key.
    megastack wrote nothing for it, so with several keys the datasets no longer lined up.
    GPTDataset samples sequences, so training never sees such documents."""
    import json

    import torch

    spec = tokenizer_spec_for_module("gpt2")
    tok = spec.build()
    rows = [{"text": "" if i % 3 == 0 else t, "title": t[:40] if i % 4 == 0 else ""}
            for i, t in enumerate(sample_docs(60))]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    config = PreprocessConfig(inputs=[str(src)], output_prefix=str(tmp_path / "ours"),
                              tokenizer=spec, json_keys=("text", "title"), append_eod=True,
                              workers=2)
    prefixes = preprocess(config, report=lambda line: None).output_prefixes
    for key, ours in zip(("text", "title"), prefixes):
        mega = str(tmp_path / f"mega_{key}")
        builder = megatron_indexed.IndexedDatasetBuilder(
            mega + ".bin", dtype=optimal_token_dtype(tok.vocab_size))
        for row in rows:  # Megatron-LM's Encoder.encode for one key, then add_document
            ids = tok.tokenize(row[key])
            ids += [tok.eod] if ids else []
            builder.add_document(torch.tensor(ids, dtype=torch.int64), [len(ids)] if ids else [])
        builder.finalize(mega + ".idx")
        for ext in (".bin", ".idx"):
            assert open(ours + ext, "rb").read() == open(mega + ext, "rb").read(), key + ext
    assert len(megatron_indexed.IndexedDataset(prefixes[1]).document_indices) == len(rows) + 1
    train, valid, test = build([prefixes[0]], megatron_gpt2, tmp_path / "cache")
    assert len(train) >= 50 and len(valid) >= 5 and len(test) >= 5
    assert all(train[i]["tokens"].shape == (16,) for i in range(len(train)))


def test_build_tokenizer_gives_megatron_tokenizers(tiny_gpt2_files, sp_model, hf_tokenizer_dir):
    from megatron.core.datasets.megatron_tokenizer import MegatronLegacyTokenizer

    from megastack.data import build_tokenizer

    toks = [build_tokenizer("GPT2BPETokenizer", vocab_file=tiny_gpt2_files[0],
                            merge_file=tiny_gpt2_files[1]),
            build_tokenizer("SentencePieceTokenizer", tokenizer_model=sp_model),
            build_tokenizer("HuggingFaceTokenizer", tokenizer_model=hf_tokenizer_dir),
            build_tokenizer("NullTokenizer", vocab_size=50)]
    for tok in toks:
        assert isinstance(tok, MegatronLegacyTokenizer)
        assert tok.unique_identifiers["class"] == type(tok).__name__
        assert tok.pad == tok.eod and 0 <= tok.eod < tok.vocab_size


def build(data_path, tokenizer, cache, **kwargs):
    from megastack.data import build_gpt_datasets

    args = dict(data_path=data_path, split="90,8,2", seq_length=16, seed=7,
                train_valid_test_num_samples=(50, 5, 5), tokenizer=tokenizer,
                path_to_cache=None if cache is None else str(cache))
    args.update(kwargs)
    return build_gpt_datasets(**args)


@pytest.fixture(scope="module")
def megatron_gpt2(tiny_gpt2_files):
    from megastack.data import build_tokenizer

    return build_tokenizer("GPT2BPETokenizer", vocab_file=tiny_gpt2_files[0],
                           merge_file=tiny_gpt2_files[1])


def test_build_gpt_datasets_from_preprocessed_data(gpt2_dataset, megatron_gpt2, tmp_path):
    train, valid, test = build([gpt2_dataset], megatron_gpt2, tmp_path / "cache")
    assert len(train) >= 50 and len(valid) >= 5 and len(test) >= 5
    sample = train[0]
    assert sample["tokens"].shape == (16,) and sample["labels"].shape == (16,)
    assert sample["tokens"][1:].tolist() == sample["labels"][:-1].tolist()
    assert int(sample["tokens"].max()) < megatron_gpt2.vocab_size
    again, _, _ = build([gpt2_dataset], megatron_gpt2, tmp_path / "cache")  # cache hit
    assert again[3]["tokens"].tolist() == train[3]["tokens"].tolist()
    unmapped, _, _ = build([gpt2_dataset], megatron_gpt2, tmp_path / "cache",
                           mmap_bin_files=False)  # --no-mmap-bin-files: file reads
    assert not unmapped.dataset.mmap
    assert unmapped[3]["tokens"].tolist() == train[3]["tokens"].tolist()
    # Weighted blend in Megatron's "w1 p1 w2 p2" form, given as one string.
    blended, _, _ = build([f"0.3 {gpt2_dataset} 0.7 {gpt2_dataset}"], megatron_gpt2,
                          tmp_path / "cache")
    assert len(blended) == 50


def test_build_gpt_datasets_mock(megatron_gpt2):
    train, valid, test = build(None, megatron_gpt2, None, mock=True,
                               train_valid_test_num_samples=(8, 2, 2))
    assert train[0]["tokens"].shape == (16,)


def test_build_gpt_datasets_names_missing_prefix(gpt2_dataset, megatron_gpt2, tmp_path):
    with pytest.raises(ValueError, match=r"--data-path .*missing\.bin does not exist"):
        build(["1", gpt2_dataset, "1", str(tmp_path / "missing")], megatron_gpt2, tmp_path)
    with pytest.raises(ValueError, match="--split"):
        build([gpt2_dataset], megatron_gpt2, tmp_path, split="a,b")


def test_split_without_tokens_is_named_not_a_hang(gpt2_dataset, megatron_gpt2, tmp_path):
    # 40 documents: Megatron's default 969,30,1 leaves the test split round(39.96) = 40 to 40,
    # on which megatron-core's GPTDataset would count epochs forever.
    with pytest.raises(ValueError, match=r"--split '969,30,1' gives the test split 0 of the 40 "):
        build([gpt2_dataset], megatron_gpt2, tmp_path, split="969,30,1")
    with pytest.raises(ValueError, match="the validation split"):
        build(["1", gpt2_dataset, "1", gpt2_dataset], megatron_gpt2, tmp_path, split="99,1,0")
    train, valid, test = build([gpt2_dataset], megatron_gpt2, tmp_path, split="969,30,0")
    assert len(train) >= 50 and len(valid) >= 5 and test is None


RANK_SCRIPT = """
import sys
import torch
import torch.distributed as dist
rank, port, prefix, vocab, merges, cache, out = sys.argv[1:]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=int(rank),
                        world_size=2)
from megastack.data import build_gpt_datasets, build_tokenizer
tok = build_tokenizer("GPT2BPETokenizer", vocab_file=vocab, merge_file=merges)
train, _, _ = build_gpt_datasets(
    data_path=[prefix], split="90,8,2", seq_length=16, seed=7,
    train_valid_test_num_samples=(50, 5, 5), tokenizer=tok, path_to_cache=cache)
torch.save([train[i]["tokens"] for i in range(10)], out)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_ranks_build_the_same_datasets_sharing_one_cache(gpt2_dataset, tiny_gpt2_files,
                                                             tmp_path):
    """Both ranks of a gloo group build at once into one cache directory."""
    import torch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    # Fresh interpreters (not fork): forking a process that already runs torch or Rust
    # thread pools can deadlock the child.
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    procs = [subprocess.Popen([sys.executable, str(script), str(rank), str(port), gpt2_dataset,
                               *tiny_gpt2_files, str(tmp_path / "cache"),
                               str(tmp_path / f"r{rank}.pt")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for rank in (0, 1)]
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    finally:
        for proc in procs:
            proc.kill()
    r0, r1 = (torch.load(tmp_path / f"r{rank}.pt") for rank in (0, 1))
    assert all(torch.equal(a, b) for a, b in zip(r0, r1))
    assert any(name.endswith(".npy") for name in os.listdir(tmp_path / "cache"))
