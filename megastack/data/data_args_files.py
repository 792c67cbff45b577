"""Megatron-LM's dataset lists kept in files: --data-args-path and --per-split-data-args-path.

A blend of hundreds of datasets does not fit a command line (or a Slurm script) comfortably, so
Megatron-LM reads it from a file: ``--data-args-path F`` holds what ``--data-path`` would
(``w1 prefix1 w2 prefix2 ...`` or bare prefixes, whitespace- and newline-separated), and
``--per-split-data-args-path F.json`` holds ``{"train": ..., "valid": ..., "test": ...}`` with
what ``--train-data-path``, ``--valid-data-path`` and ``--test-data-path`` would. Besides
Megatron-LM's string or flat list per split, a list of ``[weight, prefix]`` pairs is taken too.
"""

import json
import os
from typing import Any

SPLIT_KEYS = ("train", "valid", "test")


def _read_text(path: str, flag: str) -> str:
    if not os.path.isfile(path):
        raise ValueError(f"{flag} {path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{flag} {path}: cannot read it ({err})") from None


def read_data_args_file(path: str, flag: str = "--data-args-path") -> list[str]:
    """The words of a --data-path value kept in a file; '#' starts a comment to the line's end."""
    text = _read_text(path, flag)
    words = [w for line in text.splitlines() for w in line.split("#", 1)[0].split()]
    if not words:
        raise ValueError(f"{flag} {path}: the file names no datasets; write the --data-path "
                         f"value in it, e.g. '0.7 data/web_text_document 0.3 "
                         f"data/code_text_document'")
    return words


def _split_words(value: Any, where: str) -> list[str]:
    """One split's entry: a string, a flat list of weights and prefixes, or [weight, prefix]
    pairs, as the words of --<split>-data-path."""
    if isinstance(value, str):
        return value.split()
    if not isinstance(value, list):
        raise ValueError(f"{where} must be a string or a list of prefixes (optionally weighted), "
                         f"got {type(value).__name__}")
    words: list[str] = []
    for item in value:
        if isinstance(item, list):
            if len(item) != 2:
                raise ValueError(f"{where}: {item!r} is not a [weight, prefix] pair")
            words += [str(item[0]), str(item[1])]
        elif isinstance(item, (str, int, float)) and not isinstance(item, bool):
            words += str(item).split()
        else:
            raise ValueError(f"{where}: {item!r} is neither a prefix, a weight nor a "
                             f"[weight, prefix] pair")
    return words


def read_per_split_data_args_file(path: str, flag: str = "--per-split-data-args-path"
                                  ) -> tuple[list[str], list[str], list[str]]:
    """(train, valid, test) words from the JSON file; a split left out is empty."""
    text = _read_text(path, flag)
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        example = '{"train": ["0.7", "a_text_document", "0.3", "b_text_document"], ' \
                  '"valid": "c_text_document"}'
        raise ValueError(f"{flag} {path}: line {err.lineno}, column {err.colno}: {err.msg} "
                         f"(the file must be JSON such as {example})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{flag} {path}: the file must hold a JSON object with the keys "
                         f"{', '.join(SPLIT_KEYS)}, got a {type(spec).__name__}")
    unknown = sorted(set(spec) - set(SPLIT_KEYS))
    if unknown:
        raise ValueError(f"{flag} {path}: unknown key(s) {', '.join(map(repr, unknown))}; the "
                         f"keys are {', '.join(SPLIT_KEYS)}")
    if "train" not in spec:
        raise ValueError(f"{flag} {path}: no \"train\" entry; every run needs training data")
    train, valid, test = (_split_words(spec[key], f"{flag} {path}: \"{key}\"")
                          if spec.get(key) is not None else [] for key in SPLIT_KEYS)
    return train, valid, test
