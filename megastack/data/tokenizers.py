"""Offline tokenizers with megatron-core's legacy tokenizer interface.

Each class produces the token stream Megatron-LM's ``tools/preprocess_data.py`` writes for the
same ``--tokenizer-type`` (megatron-core 0.16 tokenizer system, default flags):

- ``GPT2BPETokenizer``: GPT-2 byte-level BPE from ``encoder.json`` + ``vocab.bpe``; eod is
  ``<|endoftext|>`` (50256). Literal ``<|endoftext|>`` inside text is encoded as ordinary text,
  as in the reference GPT-2 algorithm (Megatron's ``gpt2_tokenization.py``), so a document can
  never forge a document boundary.
- ``SentencePieceTokenizer``: plain ``encode_as_ids``; eod is the model's ``eos_id``.
- ``HuggingFaceTokenizer``: a local ``tokenizer.json`` through the ``tokenizers`` package, with
  the tokenizer's special tokens (e.g. Llama's BOS from its post-processor) as Megatron's
  ``self._tokenizer(text).input_ids`` gives them; ``include_special_tokens=False`` (Megatron's
  ``--tokenizer-hf-no-include-special-tokens``) leaves them out. eod is the eos token named in
  ``tokenizer_config.json`` or ``special_tokens_map.json``, as AutoTokenizer reads it.
- ``NullTokenizer``: space-separated integers (blank text: no tokens); eod is ``vocab_size``
  (vocabulary is one larger).

Nothing here touches the network. Importing megatron-core takes seconds (it pulls in torch), so
the classes here stand alone and ``tools/preprocess_data.py`` builds them with
``build_text_tokenizer``; ``build_tokenizer`` returns the same classes with megatron-core's
``MegatronLegacyTokenizer`` as a base (see megatron_tokenizers.py) for GPTDataset and the trainer.
"""

import json
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

TOKENIZER_TYPES = ("GPT2BPETokenizer", "SentencePieceTokenizer", "HuggingFaceTokenizer",
                   "NullTokenizer")

# Tried in order when a tokenizer.json comes without a tokenizer_config.json naming its eos.
_COMMON_EOS_TOKENS = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|eot_id|>", "[SEP]")


class TextTokenizer:
    """Shared plumbing: identifiers for megatron-core's dataset cache keys, pad = eod.

    Subclasses provide tokenize, detokenize, vocab, inv_vocab, vocab_size and eod.
    """

    def __init__(self, *paths: str, **options) -> None:
        # Same fields MegatronLegacyTokenizer.__init__ fills (GPTDataset hashes them into its
        # cache names); that __init__ is not called because it logs a deprecation warning meant
        # for Megatron-LM's own legacy classes.
        self.unique_identifiers = OrderedDict()
        self.unique_identifiers["class"] = type(self).__name__
        self.unique_identifiers["tokenizer_path"] = list(paths)
        for name, value in options.items():
            self.unique_identifiers[name] = str(value)
        self.unique_description = json.dumps(self.unique_identifiers, indent=4)

    @property
    def pad(self) -> int:
        # GPT pre-training never pads inside documents; megatron-core only needs a valid id.
        return self.eod

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, eod={self.eod})"


def _bytes_to_unicode() -> dict:
    """GPT-2's reversible byte -> printable unicode character table."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


class GPT2BPETokenizer(TextTokenizer):
    """GPT-2 byte-level BPE, run by the `tokenizers` package (Rust) for speed.

    tests/data/test_tokenizers.py checks it token for token against a pure-Python port of the
    reference GPT-2 algorithm.
    """

    def __init__(self, vocab_file: str, merge_file: str) -> None:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        for flag, path in (("--vocab-file", vocab_file), ("--merge-file", merge_file)):
            if not path or not os.path.isfile(path):
                raise ValueError(f"GPT2BPETokenizer needs {flag}: "
                                 + (f"no file at {path!r}" if path else "not given"))
        super().__init__(vocab_file, merge_file)
        # Swapped files are the usual mistake; the hint says which goes where.
        expected = "(--vocab-file takes GPT-2's encoder.json, --merge-file its vocab.bpe)"
        try:
            with open(vocab_file, encoding="utf-8") as f:
                self._encoder = json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"--vocab-file {vocab_file}: not a JSON token -> id table ({err}) "
                             f"{expected}") from None
        if not isinstance(self._encoder, dict) \
                or not all(isinstance(i, int) for i in self._encoder.values()):
            raise ValueError(f"--vocab-file {vocab_file}: not a JSON object mapping tokens to "
                             f"ids {expected}")
        self._decoder = {i: t for t, i in self._encoder.items()}
        self._byte_decoder = {c: b for b, c in _bytes_to_unicode().items()}
        if "<|endoftext|>" not in self._encoder:
            raise ValueError(f"{vocab_file} has no '<|endoftext|>' entry: not a GPT-2 encoder.json")
        self._eod = self._encoder["<|endoftext|>"]
        try:
            bpe = models.BPE.from_file(vocab_file, merge_file)
        except Exception as err:  # the Rust side raises plain Exception
            raise ValueError(f"--merge-file {merge_file}: not a GPT-2 merges file, one \"a b\" "
                             f"pair per line ({err}) {expected}") from None
        self._tokenizer = Tokenizer(bpe)
        self._tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                 use_regex=True)
        self._tokenizer.decoder = decoders.ByteLevel()

    def tokenize(self, text: str) -> List[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def detokenize(self, ids: Sequence[int]) -> str:
        # Same bytes -> str step as the reference (errors="replace"), not the Rust decoder's.
        chars = "".join(self._decoder[int(i)] for i in ids)
        return bytearray(self._byte_decoder[c] for c in chars).decode("utf-8", errors="replace")

    @property
    def vocab(self) -> dict:
        return self._encoder

    @property
    def inv_vocab(self) -> dict:
        return self._decoder

    @property
    def vocab_size(self) -> int:
        return len(self._encoder)

    @property
    def eod(self) -> int:
        return self._eod


class SentencePieceTokenizer(TextTokenizer):
    """A SentencePiece model; plain ``encode_as_ids`` (Megatron's non-legacy mode)."""

    def __init__(self, tokenizer_model: str) -> None:
        import sentencepiece

        if not tokenizer_model or not os.path.isfile(tokenizer_model):
            raise ValueError("SentencePieceTokenizer needs --tokenizer-model: "
                             + (f"no file at {tokenizer_model!r}" if tokenizer_model
                                else "not given"))
        super().__init__(tokenizer_model)
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=tokenizer_model)
        except (RuntimeError, OSError) as err:
            raise ValueError(f"--tokenizer-model {tokenizer_model}: not a SentencePiece .model "
                             f"file ({err})") from None
        if self._sp.eos_id() < 0:
            raise ValueError(f"{tokenizer_model} has no eos piece (trained with eos_id=-1); "
                             "megastack uses eos as the end-of-document token. Retrain it with "
                             "tools/train_tokenizer.py.")

    def tokenize(self, text: str) -> List[int]:
        return self._sp.encode_as_ids(text)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._sp.decode_ids([int(i) for i in ids])

    @property
    def vocab(self) -> dict:
        return {self._sp.id_to_piece(i): i for i in range(self.vocab_size)}

    @property
    def inv_vocab(self) -> dict:
        return {i: self._sp.id_to_piece(i) for i in range(self.vocab_size)}

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def eod(self) -> int:
        return self._sp.eos_id()


def _find_tokenizer_json(path: str) -> str:
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
        raise ValueError("HuggingFaceTokenizer needs --tokenizer-model: a tokenizer.json file or "
                         f"a directory holding one; no file at {path!r}")
    return path


def _eos_from_json(path: str) -> Optional[str]:
    """The "eos_token" of a Hugging Face config file (a string or an AddedToken dict)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"--tokenizer-model: {path} is not valid JSON ({err}); fix or "
                         "remove it") from None
    eos = config.get("eos_token") if isinstance(config, dict) else None
    return eos.get("content") if isinstance(eos, dict) else eos


def _configured_eos_token(tokenizer_json: str) -> Optional[str]:
    # AutoTokenizer takes eos from tokenizer_config.json, else from special_tokens_map.json;
    # guessing from _COMMON_EOS_TOKENS instead could pick another eod than Megatron's.
    directory = os.path.dirname(tokenizer_json)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        eos = _eos_from_json(os.path.join(directory, name))
        if eos:
            return eos
    return None


class HuggingFaceTokenizer(TextTokenizer):
    """A local ``tokenizer.json`` (no transformers, no hub).

    ``include_special_tokens`` (default True, as in Megatron-LM) runs the tokenizer's
    post-processor, which adds e.g. Llama's BOS to every document (every sentence with
    --split-sentences).
    """

    def __init__(self, tokenizer_model: str, include_special_tokens: bool = True) -> None:
        from tokenizers import Tokenizer

        tokenizer_json = _find_tokenizer_json(tokenizer_model)
        # Recorded only when off, so the default keeps the identifiers (and so megatron-core's
        # dataset cache names) of earlier runs.
        options = {} if include_special_tokens else {"include_special_tokens": False}
        super().__init__(tokenizer_json, **options)
        self._include_special_tokens = bool(include_special_tokens)
        try:
            self._tokenizer = Tokenizer.from_file(tokenizer_json)
        except Exception as err:  # the Rust side raises plain Exception
            raise ValueError(f"--tokenizer-model {tokenizer_json}: not a Hugging Face "
                             f"tokenizer.json ({err})") from None
        eos = _configured_eos_token(tokenizer_json)
        candidates = (eos,) if eos else _COMMON_EOS_TOKENS
        eod = next((self._tokenizer.token_to_id(t) for t in candidates
                    if self._tokenizer.token_to_id(t) is not None), None)
        if eod is None:
            raise ValueError(f"{tokenizer_json}: cannot tell the end-of-document token; looked "
                             f"for {list(candidates)}. Put a tokenizer_config.json with "
                             "\"eos_token\" next to it.")
        self._eod = eod

    def tokenize(self, text: str) -> List[int]:
        return self._tokenizer.encode(text,
                                      add_special_tokens=self._include_special_tokens).ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    @property
    def vocab(self) -> dict:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    @property
    def inv_vocab(self) -> dict:
        return {i: t for t, i in self.vocab.items()}

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def eod(self) -> int:
        return self._eod


class NullTokenizer(TextTokenizer):
    """Text is space-separated token ids; for benchmarks and tests."""

    def __init__(self, vocab_size: int) -> None:
        if vocab_size is None or int(vocab_size) <= 0:
            raise ValueError(f"NullTokenizer needs --vocab-size > 0, got {vocab_size!r}")
        super().__init__(vocab_size=int(vocab_size))
        self._vocab_size_without_eod = int(vocab_size)

    def tokenize(self, text: str) -> List[int]:
        if not text.strip():
            return []  # an empty document, not a malformed id
        ids = [int(x) for x in text.split(" ")]
        out_of_range = [i for i in ids if not 0 <= i < self.vocab_size]
        if out_of_range:
            # Megatron would write them and corrupt the .bin's dtype; refuse instead.
            raise ValueError(f"token id {out_of_range[0]} outside [0, {self.vocab_size})")
        return ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return " ".join(str(int(i)) for i in ids)

    @property
    def vocab(self) -> dict:
        return {str(i): i for i in range(self.vocab_size)}

    @property
    def inv_vocab(self) -> dict:
        return {i: str(i) for i in range(self.vocab_size)}

    @property
    def vocab_size(self) -> int:
        return self._vocab_size_without_eod + 1

    @property
    def eod(self) -> int:
        return self._vocab_size_without_eod


@dataclass(frozen=True)
class TokenizerSpec:
    """Everything needed to rebuild a tokenizer: picklable, so worker processes build their own."""

    tokenizer_type: str
    tokenizer_model: Optional[str] = None
    vocab_file: Optional[str] = None
    merge_file: Optional[str] = None
    vocab_size: Optional[int] = None
    # HuggingFaceTokenizer only: False is Megatron's --tokenizer-hf-no-include-special-tokens.
    hf_include_special_tokens: bool = True

    def build(self) -> TextTokenizer:
        return build_text_tokenizer(**asdict(self))


def _classes_by_type(megatron_base: bool) -> dict:
    if megatron_base:
        from megastack.data import megatron_tokenizers as module
    else:
        import megastack.data.tokenizers as module
    return {name: getattr(module, name) for name in TOKENIZER_TYPES}


def _build(classes: dict, tokenizer_type: str, tokenizer_model, vocab_file, merge_file,
           vocab_size, hf_include_special_tokens: bool) -> TextTokenizer:
    if tokenizer_type not in classes:
        raise ValueError(f"unknown --tokenizer-type {tokenizer_type!r}; choose one of "
                         f"{', '.join(TOKENIZER_TYPES)}")
    cls = classes[tokenizer_type]
    if tokenizer_type == "GPT2BPETokenizer":
        return cls(vocab_file, merge_file)
    if tokenizer_type == "NullTokenizer":
        return cls(vocab_size)
    if tokenizer_type == "HuggingFaceTokenizer":
        return cls(tokenizer_model, include_special_tokens=hf_include_special_tokens)
    return cls(tokenizer_model)


def add_hf_special_token_flags(group, dest: str = "hf_include_special_tokens") -> None:
    """Megatron-LM's flags for TokenizerSpec.hf_include_special_tokens (default True)."""
    import argparse

    group.add_argument("--tokenizer-hf-no-include-special-tokens", dest=dest,
                       action="store_false", default=True,
                       help="HuggingFaceTokenizer: leave out the special tokens its post-processor "
                            "adds (e.g. Llama's BOS before every document); by default they are "
                            "written, as Megatron-LM does")
    # Older Megatron-LM scripts pass the opt-in form; including them is the default here.
    group.add_argument("--tokenizer-hf-include-special-tokens", dest=dest,
                       action="store_true", default=True, help=argparse.SUPPRESS)


def build_text_tokenizer(tokenizer_type: str, *, tokenizer_model: Optional[str] = None,
                         vocab_file: Optional[str] = None, merge_file: Optional[str] = None,
                         vocab_size: Optional[int] = None,
                         hf_include_special_tokens: bool = True) -> TextTokenizer:
    """Build a tokenizer without importing megatron-core (fast; for preprocessing)."""
    return _build(_classes_by_type(False), tokenizer_type, tokenizer_model, vocab_file,
                  merge_file, vocab_size, hf_include_special_tokens)


def build_tokenizer(tokenizer_type: str, *, tokenizer_model: Optional[str] = None,
                    vocab_file: Optional[str] = None, merge_file: Optional[str] = None,
                    vocab_size: Optional[int] = None,
                    hf_include_special_tokens: bool = True) -> TextTokenizer:
    """Build a tokenizer by Megatron's ``--tokenizer-type`` name, from local files only.

    The object is a ``megatron.core.datasets.megatron_tokenizer.MegatronLegacyTokenizer``
    (megatron-core 0.16's name for the old ``MegatronTokenizer``), ready for GPTDatasetConfig.
    ``hf_include_special_tokens`` only changes ``tokenize``, which training does not call:
    the datasets hold tokens already.
    """
    return _build(_classes_by_type(True), tokenizer_type, tokenizer_model, vocab_file,
                  merge_file, vocab_size, hf_include_special_tokens)
