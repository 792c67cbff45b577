"""Fixtures for the data tests: tiny tokenizers built offline, small corpora, file helpers."""

import gzip
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "data" / "sample.jsonl.gz"
NLTK_DATA = REPO / "examples" / "data" / "nltk_data"
SHARED_GPT2 = REPO.parent / "shared" / "tokenizers" / "gpt2"

# Texts that stress tokenizers and the writer: numbers, unicode, whitespace, empty lines.
TRICKY_TEXTS = [
    "Call me Ishmael. Some years ago—never mind how long precisely.",
    "Numbers: 0 1 12 123 1234 12345 3.14159 -42 1e10 2,000,000 and 007.",
    "Unicode: naïve café, Straße, ελληνικά, русский, 日本語, 한국어, emoji 🐳🚢, ZWJ 👩‍👩‍👧.",
    "Lines\n\n\nwith empty lines\n\n  and   odd    spacing\t\ttabs\r\nCRLF\n",
    "Quotes 'tis the end' he's they'll I'd we've you're 'S 'T.",
    "Mr. Smith went to Washington. Dr. Who? Yes! It was 5 p.m. on Jan. 3rd. \"Really?\" she said.",
    "<|endoftext|> literal special token text </s> <s> <unk>",
    "   leading and trailing spaces   ",
]


def write_jsonl(path: Path, docs, key: str = "text", gz: bool = False) -> Path:
    lines = "".join(json.dumps({"id": i, key: d}) + "\n" for i, d in enumerate(docs))
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")
    return path


def sample_docs(n: int):
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        return [json.loads(next(f))["text"] for _ in range(n)]


def long_document(chars: int) -> str:
    base = " ".join(sample_docs(3))
    return (base * (chars // len(base) + 1))[:chars]


@pytest.fixture(scope="session")
def training_text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "train.jsonl"
    return write_jsonl(path, sample_docs(20) + TRICKY_TEXTS)


@pytest.fixture(scope="session")
def tiny_gpt2_files(tmp_path_factory, training_text_file):
    """A GPT-2-format encoder.json + vocab.bpe (byte-level BPE, 600 ids) trained on sample text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    out = tmp_path_factory.mktemp("gpt2tiny")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    texts = [json.loads(line)["text"] for line in training_text_file.open(encoding="utf-8")]
    tok.train_from_iterator(texts, trainer)
    vocab_file, merge_file = tok.model.save(str(out))
    os.rename(vocab_file, out / "encoder.json")
    os.rename(merge_file, out / "vocab.bpe")
    return str(out / "encoder.json"), str(out / "vocab.bpe")


@pytest.fixture(scope="session")
def real_gpt2_files():
    vocab, merges = SHARED_GPT2 / "encoder.json", SHARED_GPT2 / "vocab.bpe"
    if not (vocab.is_file() and merges.is_file()):
        pytest.skip("GPT-2 vocabulary not available at ../shared/tokenizers/gpt2")
    return str(vocab), str(merges)


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory, training_text_file) -> str:
    from megastack.data.tokenizer_training import TokenizerTrainingConfig, train_sentencepiece

    prefix = tmp_path_factory.mktemp("sp") / "sp"
    return train_sentencepiece(TokenizerTrainingConfig(
        inputs=[str(training_text_file)], model_prefix=str(prefix), vocab_size=400,
        num_threads=1))


def _byte_level_bpe(tiny_gpt2_files, special: list[str]):
    """The tiny GPT-2 BPE as a Hugging Face byte-level tokenizer with `special` tokens added."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE.from_file(*tiny_gpt2_files))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t in special])
    return tok


def _save_hf_dir(tok, out) -> str:
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    return str(out)


@pytest.fixture(scope="session")
def hf_tokenizer_dir(tmp_path_factory, tiny_gpt2_files) -> str:
    """A tokenizer.json (byte-level BPE with an added </s>) plus tokenizer_config.json."""
    return _save_hf_dir(_byte_level_bpe(tiny_gpt2_files, ["</s>"]),
                        tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="session")
def hf_bos_tokenizer_dir(tmp_path_factory, tiny_gpt2_files) -> str:
    """Like hf_tokenizer_dir, but its post-processor puts <s> first, as Llama's does."""
    from tokenizers import processors

    tok = _byte_level_bpe(tiny_gpt2_files, ["<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return _save_hf_dir(tok, tmp_path_factory.mktemp("hf_bos"))


TOKENIZER_KINDS = ["gpt2", "sentencepiece", "huggingface", "null"]


@pytest.fixture
def tokenizer_spec_for(request, tiny_gpt2_files, sp_model, hf_tokenizer_dir):
    from megastack.data.tokenizers import TokenizerSpec

    def make(kind: str) -> TokenizerSpec:
        if kind == "gpt2":
            return TokenizerSpec("GPT2BPETokenizer", vocab_file=tiny_gpt2_files[0],
                                 merge_file=tiny_gpt2_files[1])
        if kind == "sentencepiece":
            return TokenizerSpec("SentencePieceTokenizer", tokenizer_model=sp_model)
        if kind == "huggingface":
            return TokenizerSpec("HuggingFaceTokenizer", tokenizer_model=hf_tokenizer_dir)
        return TokenizerSpec("NullTokenizer", vocab_size=70000)
    return make


def null_texts(n_docs: int, seed: int = 0):
    """Space-separated ids for the NullTokenizer, some above 65535 (int32 output)."""
    import random

    rng = random.Random(seed)
    return [" ".join(str(rng.randrange(70000)) for _ in range(rng.randrange(1, 300)))
            for _ in range(n_docs)]
