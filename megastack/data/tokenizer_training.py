"""Train a SentencePiece model (BPE or unigram) from the same JSON-lines input as preprocessing.

Defaults make the model lossless for GPT pre-training: identity normalization, extra whitespace
kept, byte fallback for characters outside the vocabulary (so newlines and rare symbols survive a
round trip), digits split one per token. eos (id 2) is the end-of-document token.

Text reaches SentencePiece line by line, lines longer than it accepts cut into pieces, and the
sample it trains on is drawn here with the seed, so a seed fixes the model.
"""

import logging
import os
import random
import re
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

from megastack.data.document_encoder import LineError, parse_fields
from megastack.data.jsonl_reader import BadInputError, LineReader, expand_inputs
from megastack.paths import check_output_dir

logger = logging.getLogger(__name__)

MODEL_TYPES = ("bpe", "unigram")
# SentencePiece silently drops any "sentence" longer than this many bytes, so longer lines are
# cut into pieces no longer than it before they reach the trainer (see split_long_line).
MAX_SENTENCE_BYTES = 16384
# A cut at a sentence end is preferred when one lies in the last half of the byte window; an
# earlier one would leave many small pieces, so a later space wins instead.
_SENTENCE_END = re.compile(rb"[.!?][\"')\]]*[ \t]")
_WHITESPACE = re.compile(rb"[ \t]")
# "INTERNAL: src/trainer_interface.cc(744) [a == b] " before SentencePiece's own message.
_CHECK_PREFIX = re.compile(r"^[A-Z_]+: \S+\(\d+\) \[.*?\] ")


@dataclass
class TokenizerTrainingConfig:
    inputs: Sequence[str]
    model_prefix: str
    vocab_size: int
    model_type: str = "bpe"
    json_keys: Tuple[str, ...] = ("text",)
    character_coverage: float = 0.9995
    input_sentence_size: int = 10_000_000  # a seeded random sample when there are more lines
    seed: int = 1234
    skip_bad_lines: bool = False
    num_threads: Optional[int] = None


def split_long_line(line: str, max_bytes: int = MAX_SENTENCE_BYTES) -> List[str]:
    """Cut ``line`` into pieces of at most ``max_bytes`` UTF-8 bytes.

    Cuts fall after a sentence end, else at a space or tab, else between two characters. The
    space or tab at a cut is dropped: SentencePiece puts a word-boundary mark at the start of
    every sentence, which stands for it.
    """
    data = line.encode("utf-8")
    if len(data) <= max_bytes:
        return [line]
    pieces: List[str] = []
    start = 0
    while len(data) - start > max_bytes:
        # The byte at start + max_bytes may itself be the dropped space, hence the + 1.
        window = data[start:start + max_bytes + 1]
        cut = _last_match_end(_SENTENCE_END, window, max_bytes // 2)
        if cut is None:
            cut = _last_match_end(_WHITESPACE, window, 1)
        if cut is not None:
            pieces.append(data[start:start + cut - 1].decode("utf-8"))
            start += cut
            continue
        cut = max_bytes
        # 0b10xxxxxx bytes continue a character: back up to the character's first byte.
        while data[start + cut] & 0xC0 == 0x80:
            cut -= 1
        pieces.append(data[start:start + cut].decode("utf-8"))
        start += cut
    pieces.append(data[start:].decode("utf-8"))
    return [p for p in pieces if p.strip()]


def _last_match_end(pattern: "re.Pattern[bytes]", window: bytes, min_end: int) -> Optional[int]:
    end = None
    for match in pattern.finditer(window):
        end = match.end()
    return end if end is not None and end >= min_end else None


def iter_training_lines(files: Sequence[str], json_keys: Sequence[str],
                        skip_bad_lines: bool) -> Iterator[str]:
    """Non-blank text lines of every document, in input order, each at most
    MAX_SENTENCE_BYTES long (longer ones are split)."""
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
                        yield from split_long_line(line)


def sample_lines(lines: Iterator[str], size: int, seed: int) -> Tuple[List[str], int]:
    """A uniform random sample of at most ``size`` lines (all of them when there are fewer,
    in input order), and the number of lines seen. ``size`` 0 keeps every line.

    Reservoir sampling: one pass, and only the sample is held. SentencePiece's own sampling
    gave a different model on every run, whatever seed it was given.
    """
    rng = random.Random(seed)
    sample: List[str] = []
    seen = 0
    for seen, line in enumerate(lines, start=1):
        if size <= 0 or len(sample) < size:
            sample.append(line)
        else:
            slot = rng.randrange(seen)
            if slot < size:
                sample[slot] = line
    return sample, seen


def train_sentencepiece(config: TokenizerTrainingConfig) -> str:
    """Train and write ``model_prefix.model`` / ``.vocab``; returns the .model path."""
    import sentencepiece

    if config.model_type not in MODEL_TYPES:
        raise ValueError(f"--model-type must be one of {MODEL_TYPES}, got {config.model_type!r}")
    if config.vocab_size < 300:
        raise ValueError(f"--vocab-size {config.vocab_size} is too small: byte fallback alone "
                         "takes 259 ids")
    check_output_dir(f"--model-prefix {config.model_prefix}",
                     os.path.dirname(os.path.abspath(config.model_prefix)))
    if config.input_sentence_size < 0:
        raise ValueError(f"--input-sentence-size must be >= 0 (0: every line), got "
                         f"{config.input_sentence_size}")
    files = expand_inputs(config.inputs)
    lines, seen = sample_lines(iter_training_lines(files, config.json_keys,
                                                   config.skip_bad_lines),
                               config.input_sentence_size, config.seed)
    if not lines:
        raise BadInputError(f"no text to train on in {', '.join(files)}: every line is blank "
                            "or its --json-keys hold only whitespace")
    logger.info("training on %d of %d lines", len(lines), seen)
    parent = os.path.dirname(os.path.abspath(config.model_prefix))
    os.makedirs(parent, exist_ok=True)
    # SentencePiece writes PREFIX.model and PREFIX.vocab itself: it writes them under a
    # temporary prefix, renamed once both exist, so a failed or killed run leaves an earlier
    # tokenizer at PREFIX whole and no partial one.
    tmp_prefix = f"{config.model_prefix}.tmp-{os.getpid()}"
    try:
        _train(sentencepiece, _drain(lines), config, tmp_prefix)
        _record_prefix(tmp_prefix + ".model", config.model_prefix)
        for suffix in (".vocab", ".model"):
            os.replace(tmp_prefix + suffix, config.model_prefix + suffix)
    except RuntimeError as err:
        # SentencePiece reports user errors as failed internal checks; keep only the sentence
        # meant for people ("Vocabulary size too high (4000). Please set it to ...").
        message = _CHECK_PREFIX.sub("", str(err).strip())
        if "ocabulary size" in message:
            # Too high for the text ("too high ... Please set it to a value <= N"), or below
            # the characters it must cover ("smaller than required_chars ... Increase
            # vocab_size or decrease character_coverage with --character_coverage option.").
            advice = ("" if "required_chars" in message
                      else " Lower --vocab-size or train on more text.")
            message = message.replace("--character_coverage", "--character-coverage")
            raise ValueError(f"--vocab-size {config.vocab_size} does not fit the text in "
                             f"{', '.join(files)}: {message}{advice}") from None
        raise ValueError(f"SentencePiece could not train on {', '.join(files)}: "
                         f"{message}") from None
    finally:
        for suffix in (".model", ".vocab"):
            if os.path.exists(tmp_prefix + suffix):
                os.remove(tmp_prefix + suffix)
    return config.model_prefix + ".model"


def _record_prefix(model_file: str, prefix: str) -> None:
    """The model records the prefix it was trained for: the final one, not the temporary one,
    so that the bytes are those SentencePiece writes for PREFIX (and a seed fixes them)."""
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    with open(model_file, "rb") as f:
        model.ParseFromString(f.read())
    model.trainer_spec.model_prefix = prefix
    with open(model_file, "wb") as f:
        f.write(model.SerializeToString())


def _drain(lines: List[str]) -> Iterator[str]:
    """Yield the lines in order, letting go of each once SentencePiece has copied it."""
    lines.reverse()
    while lines:
        yield lines.pop()


def _train(sentencepiece, lines: Iterator[str], config: TokenizerTrainingConfig,
           model_prefix: str) -> None:
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=lines,
        model_prefix=model_prefix,
        vocab_size=config.vocab_size,
        model_type=config.model_type,
        character_coverage=config.character_coverage,
        # Sampled already (sample_lines): SentencePiece takes every line it is given.
        input_sentence_size=0,
        shuffle_input_sentence=False,
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
