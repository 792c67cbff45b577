import json
import os
import shutil

import pytest

from megastack.data.tokenizers import (SentencePieceTokenizer, TokenizerSpec,
                                       build_text_tokenizer)
from tests.data.conftest import TRICKY_TEXTS, long_document, sample_docs
from tests.data.gpt2_reference import ReferenceGPT2

ADVERSARIAL = TRICKY_TEXTS + [
    "", " ", "  ", "\n", " \n ", "a  b", "a\u00a0b", "x\u3000y", "tab\there", "'''''s",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "ééééé", "1234567890" * 5, "!!!???...", "\u200b\ufeff",
    "mixed123abc456", " 'll 've 're", "\U0001f600\U0001f601 \U0001f602", "\x00\x01\x7f",
]


def gpt2(files):
    return build_text_tokenizer("GPT2BPETokenizer", vocab_file=files[0], merge_file=files[1])


def test_gpt2_matches_reference_algorithm_tiny_vocab(tiny_gpt2_files):
    tok, ref = gpt2(tiny_gpt2_files), ReferenceGPT2(*tiny_gpt2_files)
    for text in ADVERSARIAL + sample_docs(5):
        assert tok.tokenize(text) == ref.encode(text), text[:60]


def test_gpt2_matches_reference_algorithm_real_vocab(real_gpt2_files):
    tok, ref = gpt2(real_gpt2_files), ReferenceGPT2(*real_gpt2_files)
    assert tok.vocab_size == 50257 and tok.eod == 50256 and tok.pad == 50256
    for text in ADVERSARIAL + sample_docs(8):
        assert tok.tokenize(text) == ref.encode(text), text[:60]
    assert tok.tokenize("Hello world") == [15496, 995]


def test_gpt2_literal_endoftext_is_text_not_eod(tiny_gpt2_files):
    tok = gpt2(tiny_gpt2_files)
    assert tok.eod not in tok.tokenize("before <|endoftext|> after")


def test_gpt2_detokenize_round_trip(tiny_gpt2_files):
    tok = gpt2(tiny_gpt2_files)
    for text in ADVERSARIAL + [long_document(20000)]:
        assert tok.detokenize(tok.tokenize(text)) == text


def test_sentencepiece_is_plain_encode_with_eos_as_eod(sp_model):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=sp_model)
    tok = build_text_tokenizer("SentencePieceTokenizer", tokenizer_model=sp_model)
    assert tok.vocab_size == sp.get_piece_size() == 400
    assert tok.eod == sp.eos_id() == 2
    for text in ADVERSARIAL:
        assert tok.tokenize(text) == sp.encode_as_ids(text)
        # identity normalization + byte fallback: lossless
        assert tok.detokenize(tok.tokenize(text)) == text


def test_sentencepiece_without_eos_is_refused(tmp_path, training_text_file):
    import sentencepiece

    lines = [json.loads(line)["text"] for line in training_text_file.open()]
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(t for doc in lines for t in doc.split("\n") if t.strip()),
        model_prefix=str(tmp_path / "noeos"), vocab_size=200, eos_id=-1, minloglevel=2)
    with pytest.raises(ValueError, match="no eos piece"):
        SentencePieceTokenizer(str(tmp_path / "noeos.model"))


def test_huggingface_tokenizer_json(hf_tokenizer_dir, tiny_gpt2_files):
    from tokenizers import Tokenizer

    tok = build_text_tokenizer("HuggingFaceTokenizer", tokenizer_model=hf_tokenizer_dir)
    raw = Tokenizer.from_file(f"{hf_tokenizer_dir}/tokenizer.json")
    assert tok.eod == raw.token_to_id("</s>")
    assert tok.vocab_size == raw.get_vocab_size(with_added_tokens=True) == 601
    for text in ADVERSARIAL:
        assert tok.tokenize(text) == raw.encode(text).ids  # no post-processor: no extra ids
    # The file path works too, and the byte-level part agrees with GPT-2 BPE.
    by_file = build_text_tokenizer("HuggingFaceTokenizer",
                                   tokenizer_model=f"{hf_tokenizer_dir}/tokenizer.json")
    assert by_file.tokenize(TRICKY_TEXTS[2]) == gpt2(tiny_gpt2_files).tokenize(TRICKY_TEXTS[2])


def test_huggingface_includes_special_tokens_by_default_like_megatron(hf_bos_tokenizer_dir):
    """Megatron-LM writes AutoTokenizer(text).input_ids: Llama's BOS starts every document.
    megastack used to encode with add_special_tokens=False and dropped it."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(f"{hf_bos_tokenizer_dir}/tokenizer.json")
    bos = raw.token_to_id("<s>")
    plain = raw.encode("hello world", add_special_tokens=False).ids
    tok = TokenizerSpec("HuggingFaceTokenizer", tokenizer_model=hf_bos_tokenizer_dir).build()
    assert tok.tokenize("hello world") == [bos] + plain
    assert tok.eod == raw.token_to_id("</s>")
    # Megatron's --tokenizer-hf-no-include-special-tokens.
    without = TokenizerSpec("HuggingFaceTokenizer", tokenizer_model=hf_bos_tokenizer_dir,
                            hf_include_special_tokens=False).build()
    assert without.tokenize("hello world") == plain
    assert without.unique_identifiers["include_special_tokens"] == "False"
    assert "include_special_tokens" not in tok.unique_identifiers  # default: cache names kept


def test_huggingface_eos_from_special_tokens_map(tmp_path, tiny_gpt2_files):
    """AutoTokenizer reads eos from special_tokens_map.json when tokenizer_config.json has none;
    the guess from common names would have taken </s> here."""
    from tokenizers import AddedToken, Tokenizer, models

    tok = Tokenizer(models.BPE.from_file(*tiny_gpt2_files))
    tok.add_special_tokens([AddedToken("</s>", special=True),
                            AddedToken("<|im_end|>", special=True)])
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": None}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": {"content": "<|im_end|>", "special": True}}))
    built = build_text_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(tmp_path))
    assert built.eod == tok.token_to_id("<|im_end|>")
    (tmp_path / "special_tokens_map.json").write_text("{eos")
    with pytest.raises(ValueError, match="special_tokens_map.json is not valid JSON"):
        build_text_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(tmp_path))


def test_huggingface_without_known_eos_is_refused(tmp_path, tiny_gpt2_files):
    from tokenizers import Tokenizer, models

    Tokenizer(models.BPE.from_file(*tiny_gpt2_files)).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<nope>"}))
    with pytest.raises(ValueError, match="end-of-document token"):
        build_text_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(tmp_path))


def test_null_tokenizer_like_megatron():
    tok = build_text_tokenizer("NullTokenizer", vocab_size=100)
    assert tok.vocab_size == 101 and tok.eod == 100
    assert tok.tokenize("1 2 99") == [1, 2, 99]
    assert tok.detokenize([1, 2, 99]) == "1 2 99"
    with pytest.raises(ValueError, match="outside"):
        tok.tokenize("1 101")
    with pytest.raises(ValueError):
        tok.tokenize("1 two")


@pytest.mark.parametrize("kwargs, flag", [
    (dict(tokenizer_type="GPT2BPETokenizer", vocab_file="/nope.json", merge_file="/x"),
     "--vocab-file"),
    (dict(tokenizer_type="SentencePieceTokenizer", tokenizer_model="/nope.model"),
     "--tokenizer-model"),
    (dict(tokenizer_type="HuggingFaceTokenizer", tokenizer_model="/nope"), "--tokenizer-model"),
    (dict(tokenizer_type="NullTokenizer"), "--vocab-size"),
    (dict(tokenizer_type="BertWordPieceCase"), "--tokenizer-type"),
])
def test_bad_tokenizer_arguments_name_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        TokenizerSpec(**kwargs).build()


def test_unreadable_tokenizer_files_name_the_flag_and_path(tmp_path, tiny_gpt2_files,
                                                           hf_tokenizer_dir):
    vocab, merges = tiny_gpt2_files
    text = tmp_path / "notes.txt"
    text.write_text("not a tokenizer\n")
    cases = [
        # Swapped GPT-2 files: the vocab is read first.
        (dict(tokenizer_type="GPT2BPETokenizer", vocab_file=merges, merge_file=vocab),
         f"--vocab-file {merges}: not a JSON token -> id table"),
        (dict(tokenizer_type="GPT2BPETokenizer", vocab_file=vocab, merge_file=vocab),
         f"--merge-file {vocab}: not a GPT-2 merges file"),
        (dict(tokenizer_type="SentencePieceTokenizer", tokenizer_model=str(text)),
         f"--tokenizer-model {text}: not a SentencePiece .model file"),
        (dict(tokenizer_type="HuggingFaceTokenizer", tokenizer_model=str(text)),
         f"--tokenizer-model {text}: not a Hugging Face tokenizer.json"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError) as err:
            TokenizerSpec(**kwargs).build()
        assert message in str(err.value)
    # A broken tokenizer_config.json beside a good tokenizer.json.
    broken = tmp_path / "hf"
    broken.mkdir()
    shutil.copy(os.path.join(hf_tokenizer_dir, "tokenizer.json"), broken)
    (broken / "tokenizer_config.json").write_text("{eos")
    with pytest.raises(ValueError, match="tokenizer_config.json is not valid JSON"):
        TokenizerSpec("HuggingFaceTokenizer", tokenizer_model=str(broken)).build()


@pytest.mark.parametrize("alias", ["GPTSentencePieceTokenizer", "Llama2Tokenizer"])
def test_pretrain_takes_megatrons_sentencepiece_type_names(sp_model, alias):
    """Megatron-LM GPT scripts name their SentencePiece model with these types (refused as an
    invalid choice); training needs only the vocabulary size and eod, which they share."""
    from megastack.pretrain import build_tokenizer_from_args
    from megastack.training.arguments import parse_args

    def tokenizer(tokenizer_type):
        return build_tokenizer_from_args(parse_args(
            ["--model", "tiny-2l", "--tokenizer-type", tokenizer_type, "--tokenizer-model",
             sp_model, "--data-path", "unused", "--train-iters", "1"]))

    got, want = tokenizer(alias), tokenizer("SentencePieceTokenizer")
    assert (got.vocab_size, got.eod) == (want.vocab_size, want.eod)


def test_pretrain_takes_the_hf_special_token_flags():
    from megastack.training.arguments import parse_args

    base = ["--model", "tiny-2l", "--mock-data", "--train-iters", "1"]
    assert parse_args(base).tokenizer_hf_include_special_tokens
    assert parse_args(base + ["--tokenizer-hf-include-special-tokens"]).tokenizer_hf_include_special_tokens
    assert not parse_args(base + ["--tokenizer-hf-no-include-special-tokens"]
                          ).tokenizer_hf_include_special_tokens
