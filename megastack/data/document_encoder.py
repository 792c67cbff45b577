"""Turn raw JSON lines into token arrays: the work each preprocessing worker does.

The per-document steps follow Megatron-LM's preprocess_data.py ``Encoder.encode``: optional
sentence split, tokenize each sentence, drop sentences with no tokens, optionally append eod to
the last sentence. A document with no tokens at all (empty text, or whitespace the tokenizer
drops) gets no eod and is written, as Megatron's builder writes it, as a document of zero
sequences: the .idx is byte-identical, and with several --json-keys document i of every key's
dataset stays the same input line. GPTDataset never sees such documents (it samples sequences).
Unlike Megatron, a line that cannot become a document (bad JSON, missing key, invalid UTF-8) is
reported with its file:line instead of crashing a worker.
"""

import json
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from megastack.data.indexed_writer import optimal_token_dtype
from megastack.data.jsonl_reader import LineBatch
from megastack.data.sentence_splitter import SentenceSplitter
from megastack.data.tokenizers import TokenizerSpec


@dataclass(frozen=True)
class EncodeOptions:
    tokenizer: TokenizerSpec
    json_keys: Tuple[str, ...] = ("text",)
    append_eod: bool = False
    split_sentences: bool = False
    keep_newlines: bool = False
    nltk_data_root: Optional[str] = None
    lang: str = "english"


@dataclass(frozen=True)
class BadLine:
    path: str
    line_number: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line_number}: {self.reason}"


@dataclass
class EncodedKey:
    """All documents of a batch for one JSON key, in the writer's layout."""

    tokens: np.ndarray
    sequence_lengths: np.ndarray  # int32, one per sentence (one per document without splitting)
    sequences_per_document: np.ndarray  # int64


@dataclass
class EncodedBatch:
    keys: List[EncodedKey]
    num_documents: int
    num_tokens: int
    text_bytes: int
    blank_lines: int = 0
    empty_documents: int = 0  # (line, key) pairs whose text has no tokens: zero sequences
    bad_lines: List[BadLine] = field(default_factory=list)


class LineError(Exception):
    """Why one input line cannot become a document."""


def parse_fields(data: bytes, json_keys: Sequence[str]) -> List[Union[str, List[str]]]:
    """The value of each key of one JSON line: text, or a list of sentences."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise LineError(f"invalid UTF-8 at byte {err.start} of the line") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        # Some messages end in "at" ("Invalid control character at"); don't double it.
        message = err.msg[:-len(" at")] if err.msg.endswith(" at") else err.msg
        raise LineError(f"malformed JSON: {message} at column {err.colno}") from None
    if not isinstance(document, dict):
        raise LineError(f"expected a JSON object, got {type(document).__name__}")
    fields = []
    for key in json_keys:
        if key not in document:
            raise LineError(f"missing key {key!r} (keys: {sorted(document)[:10]}); "
                            "choose keys with --json-keys")
        value = document[key]
        if not (isinstance(value, str)
                or (isinstance(value, list) and all(isinstance(s, str) for s in value))):
            raise LineError(f"key {key!r} holds {type(value).__name__}, not text")
        fields.append(value)
    return fields


class DocumentEncoder:
    def __init__(self, options: EncodeOptions) -> None:
        self.options = options
        self.tokenizer = options.tokenizer.build()
        self.token_dtype = optimal_token_dtype(self.tokenizer.vocab_size)
        self.splitter = (SentenceSplitter(options.nltk_data_root, options.lang,
                                          options.keep_newlines)
                         if options.split_sentences else None)

    def encode_lines(self, lines: LineBatch) -> EncodedBatch:
        n_keys = len(self.options.json_keys)
        tokens = [[] for _ in range(n_keys)]
        lengths = [[] for _ in range(n_keys)]
        per_doc = [[] for _ in range(n_keys)]
        batch = EncodedBatch(keys=[], num_documents=0, num_tokens=0,
                             text_bytes=sum(len(data) for data in lines.lines))
        for line_number, data in enumerate(lines.lines, start=lines.first_line_number):
            if not data.strip():
                # Blank lines separate nothing in JSON lines; they are not documents.
                batch.blank_lines += 1
                continue
            try:
                encoded = self._encode_document(data)
            except LineError as err:
                batch.bad_lines.append(BadLine(lines.path, line_number, str(err)))
                continue
            # Every key gets a document for every line, empty or not (Megatron's add_document
            # of no tokens): document i must be the same line in each key's dataset.
            for k, (doc_tokens, sentence_lengths) in enumerate(encoded):
                batch.empty_documents += not doc_tokens
                tokens[k].extend(doc_tokens)
                lengths[k].extend(sentence_lengths)
                per_doc[k].append(len(sentence_lengths))
                batch.num_tokens += len(doc_tokens)
            batch.num_documents += 1
        batch.keys = [EncodedKey(np.array(tokens[k], dtype=self.token_dtype),
                                 np.array(lengths[k], dtype=np.int32),
                                 np.array(per_doc[k], dtype=np.int64)) for k in range(n_keys)]
        return batch

    def _encode_document(self, data: bytes) -> List[Tuple[List[int], List[int]]]:
        fields = parse_fields(data, self.options.json_keys)
        return [self._encode_field(value, key)
                for key, value in zip(self.options.json_keys, fields)]

    def _encode_field(self, value, key: str) -> Tuple[List[int], List[int]]:
        if isinstance(value, str):
            sentences = self.splitter.split(value) if self.splitter else [value]
        else:
            sentences = value  # already split into sentences, as Megatron accepts
        doc_tokens: List[int] = []
        sentence_lengths: List[int] = []
        for sentence in sentences:
            try:
                ids = self.tokenizer.tokenize(sentence)
            except Exception as err:  # a tokenizer rejecting the text is a property of the line
                raise LineError(f"tokenizer failed on key {key!r}: {err}") from None
            if ids:
                doc_tokens.extend(ids)
                sentence_lengths.append(len(ids))
        if doc_tokens and self.options.append_eod:
            doc_tokens.append(self.tokenizer.eod)
            sentence_lengths[-1] += 1
        return doc_tokens, sentence_lengths


# Worker-process state: one encoder per process, built by the pool initializer.
_worker_encoder: Optional[DocumentEncoder] = None


def init_worker(options: EncodeOptions) -> None:
    global _worker_encoder
    # One Rust thread per worker: the process pool is the parallelism.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_encoder = DocumentEncoder(options)


def encode_in_worker(lines: LineBatch) -> EncodedBatch:
    return _worker_encoder.encode_lines(lines)
