"""Train a SentencePiece model (BPE or unigram) from the same JSON-lines input as preprocessing.

Defaults make the model lossless for GPT pre-training: identity normalization, extra whitespace
kept, byte fallback for characters outside the vocabulary (so newlines and rare symbols survive a
round trip), digits split one per token. eos (id 2) is the end-of-document token.
"""

import logging
import os
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple

from megastack.data.document_encoder import LineError, parse_fields
from megastack.data.jsonl_reader import BadInputError, LineReader, expand_inputs

logger = logging.getLogger(__name__)

MODEL_TYPES = ("bpe", "unigram")
# SentencePiece skips longer "sentences"; documents are fed line by line to stay under it.
MAX_SENTENCE_BYTES = 16384


@dataclass
class TokenizerTrainingConfig:
    inputs: Sequence[str]
    model_prefix: str
    vocab_size: int
    model_type: str = "bpe"
    json_keys: Tuple[str, ...] = ("text",)
    character_coverage: float = 0.9995
    input_sentence_size: int = 10_000_000  # sampled (shuffled) when the input has more lines
    seed: int = 1234
    skip_bad_lines: bool = False
    num_threads: Optional[int] = None


def iter_training_lines(files: Sequence[str], json_keys: Sequence[str],
                        skip_bad_lines: bool) -> Iterator[str]:
    """Non-blank text lines of every document, in input order."""
    for raw in LineReader(files):
        if not raw.data.strip():
            continue
        try:
            fields = parse_fields(raw.data, json_keys)
        except LineError as err:
            if skip_bad_lines:
                logger.warning("skipping %s:%d: %s", raw.path, raw.line_number, err)
                continue
            raise BadInputError(f"{raw.path}:{raw.line_number}: {err} (use --skip-bad-lines "
                                "to skip such lines)") from None
        for value in fields:
            for text in ([value] if isinstance(value, str) else value):
                for line in text.split("\n"):
                    if line.strip():
                        yield line


def train_sentencepiece(config: TokenizerTrainingConfig) -> str:
    """Train and write ``model_prefix.model`` / ``.vocab``; returns the .model path."""
    import sentencepiece

    if config.model_type not in MODEL_TYPES:
        raise ValueError(f"--model-type must be one of {MODEL_TYPES}, got {config.model_type!r}")
    if config.vocab_size < 300:
        raise ValueError(f"--vocab-size {config.vocab_size} is too small: byte fallback alone "
                         "takes 259 ids")
    files = expand_inputs(config.inputs)
    parent = os.path.dirname(os.path.abspath(config.model_prefix))
    os.makedirs(parent, exist_ok=True)
    lines = _RememberingIterator(iter_training_lines(files, config.json_keys,
                                                     config.skip_bad_lines))
    # The sampling of input lines is the only randomness; seed it for reproducible models.
    sentencepiece.set_random_generator_seed(config.seed)
    try:
        _train(sentencepiece, lines, config)
    except Exception:
        # SentencePiece wraps errors raised by the iterator in its own; surface the user's.
        if lines.error is not None:
            raise lines.error from None
        raise
    return config.model_prefix + ".model"


class _RememberingIterator:
    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self.error: Optional[BaseException] = None

    def __iter__(self) -> "_RememberingIterator":
        return self

    def __next__(self) -> str:
        try:
            return next(self._lines)
        except StopIteration:
            raise
        except BaseException as err:
            self.error = err
            raise


def _train(sentencepiece, lines: Iterator[str], config: TokenizerTrainingConfig) -> None:
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=lines,
        model_prefix=config.model_prefix,
        vocab_size=config.vocab_size,
        model_type=config.model_type,
        character_coverage=config.character_coverage,
        input_sentence_size=config.input_sentence_size,
        shuffle_input_sentence=True,
        seed_sentencepiece_size=1_000_000,
        max_sentence_length=MAX_SENTENCE_BYTES,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        byte_fallback=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=config.num_threads or os.cpu_count() or 1,
        minloglevel=2,
    )
