"""Hold out whole documents for validation, in a form Megatron's `--split` keeps exact.

Megatron's GPTDataset splits a dataset by *document* index ranges: `--split A,B,0` gives the
first round(A/(A+B) * N) documents to training and the rest to validation. Writing the shuffled
training documents first and the held-out ones last, and passing `--split N_train,N_valid,0`,
makes the validation set exactly the held-out documents, drawn from every source file rather
than from whichever file happens to come last.

    python -m megastack.experiments.holdout --input 'corpus/*.jsonl.gz' --output-dir DIR

writes DIR/train.jsonl (tokenizer training input), DIR/valid.jsonl, DIR/all.jsonl (train then
valid: the preprocessing input) and DIR/split.json ({"split": "N_train,N_valid,0", ...}).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

from megastack.data.jsonl_reader import LineReader, expand_inputs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class HoldoutSplit:
    num_train_documents: int
    num_valid_documents: int
    train_characters: int
    valid_characters: int
    seed: int
    inputs: tuple[str, ...]

    @property
    def megatron_split(self) -> str:
        """`--split` weights whose document ranges are exactly the train and valid sets."""
        return f"{self.num_train_documents},{self.num_valid_documents},0"


def read_documents(files: Sequence[str], text_key: str = "text") -> list[str]:
    """Raw JSON lines of every document that has a non-empty `text_key`, in file order."""
    lines = []
    for line in LineReader(files):  # plain or .gz; a truncated .gz is reported with file:line
        if not line.data.strip():
            continue
        try:
            doc = json.loads(line.data)
        except ValueError as e:  # not JSON, or not UTF-8
            raise ValueError(f"{line.path}:{line.line_number}: not JSON ({e}); fix or remove "
                             f"the line") from None
        where = f"{line.path}:{line.line_number}"
        if not isinstance(doc, dict):
            raise ValueError(f"{where}: expected a JSON object with a {text_key!r} field, got "
                             f"{type(doc).__name__}; fix or remove the line")
        text = doc.get(text_key)
        if text is None:
            continue
        if not isinstance(text, str):
            raise ValueError(f"{where}: {text_key!r} must be a string, got "
                             f"{type(text).__name__}; fix or remove the line")
        if text.strip():
            lines.append(json.dumps(doc, ensure_ascii=False))
    return lines


def split_documents(documents: Sequence[str], valid_fraction: float, seed: int,
                    max_documents: Optional[int] = None) -> tuple[list[str], list[str]]:
    """Shuffle documents with `seed` (optionally keep the first `max_documents`), then hold out
    the last `valid_fraction` of them (at least one) for validation."""
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"--valid-fraction must be in (0, 1), got {valid_fraction}")
    docs = list(documents)
    random.Random(seed).shuffle(docs)
    if max_documents is not None:
        if max_documents < 2:
            raise ValueError(f"--max-documents must be >= 2 (one to train, one to validate), "
                             f"got {max_documents}")
        docs = docs[:max_documents]
    if len(docs) < 2:
        raise ValueError(f"need at least 2 documents to hold one out, found {len(docs)}: "
                         "give more input")
    num_valid = max(1, int(round(valid_fraction * len(docs))))
    num_valid = min(num_valid, len(docs) - 1)
    return docs[:-num_valid], docs[-num_valid:]


def _text_chars(lines: Sequence[str], text_key: str) -> int:
    return sum(len(json.loads(line)[text_key]) for line in lines)


def write_holdout(inputs: Sequence[str], output_dir: str, valid_fraction: float = 0.05,
                  seed: int = 1234, max_documents: Optional[int] = None,
                  text_key: str = "text") -> HoldoutSplit:
    files = expand_inputs(inputs)
    train, valid = split_documents(read_documents(files, text_key), valid_fraction, seed,
                                   max_documents)
    os.makedirs(output_dir, exist_ok=True)
    for name, lines in (("train", train), ("valid", valid), ("all", train + valid)):
        with open(os.path.join(output_dir, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
    split = HoldoutSplit(len(train), len(valid), _text_chars(train, text_key),
                         _text_chars(valid, text_key), seed, tuple(files))
    with open(os.path.join(output_dir, "split.json"), "w") as f:
        json.dump({**asdict(split), "split": split.megatron_split}, f, indent=2)
    logger.info("held out %d of %d documents (%d characters) for validation",
                len(valid), len(train) + len(valid), split.valid_characters)
    return split


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megastack.experiments.holdout",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True, help="JSON-lines files or globs")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--valid-fraction", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--max-documents", type=int, help="keep only this many (shuffled) documents")
    p.add_argument("--json-key", default="text")
    args = p.parse_args(argv)
    try:
        split = write_holdout(args.input, args.output_dir, args.valid_fraction, args.seed,
                              args.max_documents, args.json_key)
    except ValueError as e:
        print(f"holdout: error: {e}", file=sys.stderr)
        return 2
    print(f"{split.num_train_documents} training and {split.num_valid_documents} validation "
          f"documents in {args.output_dir}; --split {split.megatron_split}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
