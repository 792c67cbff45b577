"""JSON lines -> Megatron ``PREFIX_<key>_document.bin/.idx``: the library half of
tools/preprocess_data.py.

Streaming: lines go to the workers in batches through ``Pool.imap`` (ordered), and at most a
fixed number of batches are in flight, because imap's feeder thread would otherwise read the
whole corpus into its queue while the workers lag. The only state that grows with the corpus is
the writers' compact index arrays. Output appears only when complete (see indexed_writer.py).
"""

import logging
import multiprocessing
import os
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

from megastack.data.document_encoder import (BadLine, DocumentEncoder, EncodedBatch,
                                             EncodeOptions, encode_in_worker, init_worker)
from megastack.data.indexed_writer import IndexedDatasetWriter, optimal_token_dtype
from megastack.data.jsonl_reader import (BadInputError, LineBatch, LineReader, RawLine,
                                         expand_inputs,
                                         total_input_bytes)
from megastack.data.progress import Progress, format_progress, format_summary
from megastack.data.sentence_splitter import find_nltk_data_root
from megastack.data.tokenizers import TokenizerSpec
from megastack.paths import check_output_dir

logger = logging.getLogger(__name__)

# A batch closes at this many bytes of raw lines or this many lines, whichever comes first:
# big enough that inter-process overhead is small, small enough to keep workers evenly fed.
BATCH_BYTES = 256 * 1024
BATCH_LINES = 256
# Batches queued or being encoded per worker; bounds memory whatever the corpus size.
IN_FLIGHT_PER_WORKER = 4
# With --skip-bad-lines, this many skipped lines are logged individually.
LOGGED_BAD_LINES = 10


@dataclass
class PreprocessConfig:
    inputs: Sequence[str]
    output_prefix: str
    tokenizer: TokenizerSpec
    json_keys: Tuple[str, ...] = ("text",)
    split_sentences: bool = False
    keep_newlines: bool = False
    append_eod: bool = False
    nltk_data: Optional[str] = None
    lang: str = "english"
    workers: int = 1
    log_interval: int = 1000
    skip_bad_lines: bool = False


@dataclass
class PreprocessResult:
    output_prefixes: List[str]
    progress: Progress
    bad_lines: List[BadLine] = field(default_factory=list)  # the first few, when skipped

    @property
    def summary(self) -> str:
        return format_summary(self.progress)


def output_prefix_for(output_prefix: str, key: str, split_sentences: bool) -> str:
    return f"{output_prefix}_{key}_{'sentence' if split_sentences else 'document'}"


def batch_lines(lines: Iterable[RawLine], max_bytes: Optional[int] = None,
                max_lines: Optional[int] = None) -> Iterator[LineBatch]:
    """Group consecutive lines; a batch never spans two files."""
    max_bytes = max_bytes or BATCH_BYTES
    max_lines = max_lines or BATCH_LINES
    batch: Optional[LineBatch] = None
    size = 0
    for line in lines:
        if batch is not None and line.path != batch.path:
            yield batch
            batch = None
        if batch is None:
            batch, size = LineBatch(line.path, line.line_number, []), 0
        batch.lines.append(line.data)
        size += len(line.data)
        if size >= max_bytes or len(batch.lines) >= max_lines:
            yield batch
            batch = None
    if batch is not None:
        yield batch


class _BoundedFeed:
    """Wrap the batch iterator so that at most ``limit`` batches are out at once.

    The pool's feeder thread blocks in ``acquire`` until the consumer calls ``release``;
    ``close`` unblocks it so the pool can shut down after an error.
    """

    def __init__(self, batches: Iterator[LineBatch], limit: int) -> None:
        self._batches = batches
        self._slots = threading.Semaphore(limit)
        self._closed = False

    def __iter__(self) -> Iterator[LineBatch]:
        for batch in self._batches:
            self._slots.acquire()
            if self._closed:
                return
            yield batch

    def release(self) -> None:
        self._slots.release()

    def close(self) -> None:
        self._closed = True
        self._slots.release()


def _encoded_batches(options: EncodeOptions, batches: Iterator[LineBatch], workers: int,
                     stack: ExitStack) -> Iterator[EncodedBatch]:
    if workers <= 1:
        # In-process: no pickling, and exactly the same encoder code as the workers run.
        encoder = DocumentEncoder(options)
        return (encoder.encode_lines(batch) for batch in batches)
    feed = _BoundedFeed(batches, IN_FLIGHT_PER_WORKER * workers)
    context = multiprocessing.get_context("fork" if "fork" in
                                          multiprocessing.get_all_start_methods() else None)
    pool = context.Pool(workers, initializer=init_worker, initargs=(options,))
    stack.callback(pool.join)
    stack.callback(pool.terminate)
    stack.callback(feed.close)

    def ordered_results() -> Iterator[EncodedBatch]:
        # chunksize 1: each item already is a batch of lines (BATCH_BYTES / BATCH_LINES).
        for batch in pool.imap(encode_in_worker, iter(feed), chunksize=1):
            feed.release()
            yield batch

    return ordered_results()


def preprocess(config: PreprocessConfig,
               report: Optional[Callable[[str], None]] = None) -> PreprocessResult:
    """Encode ``config.inputs`` into one indexed dataset per JSON key.

    ``report`` receives progress lines (default: logged at INFO). Raises BadInputError naming
    file:line for the first bad line unless ``skip_bad_lines``; output files then do not exist.
    """
    report = report or logger.info
    if config.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {config.workers}")
    check_output_dir(f"--output-prefix {config.output_prefix}",
                     os.path.dirname(os.path.abspath(config.output_prefix)))
    if len(set(config.json_keys)) != len(config.json_keys):
        raise ValueError(f"--json-keys {' '.join(config.json_keys)}: each key may appear once "
                         "(one output dataset per key)")
    if config.keep_newlines and not config.split_sentences:
        logger.warning("--keep-newlines only matters with --split-sentences; ignored")
    files = expand_inputs(config.inputs)
    nltk_data_root = (find_nltk_data_root(config.nltk_data, config.lang)
                      if config.split_sentences else None)
    options = EncodeOptions(tokenizer=config.tokenizer, json_keys=tuple(config.json_keys),
                            append_eod=config.append_eod,
                            split_sentences=config.split_sentences,
                            keep_newlines=config.keep_newlines,
                            nltk_data_root=nltk_data_root, lang=config.lang)
    # Built here once so a bad tokenizer file or punkt model fails before any worker starts
    # (a failing Pool initializer makes the pool respawn workers forever).
    vocab_size = DocumentEncoder(options).tokenizer.vocab_size
    prefixes = [output_prefix_for(config.output_prefix, key, config.split_sentences)
                for key in options.json_keys]
    reader = LineReader(files)
    progress = Progress(input_bytes_total=total_input_bytes(files))
    bad_lines: List[BadLine] = []
    with ExitStack() as stack:
        writers = [stack.enter_context(IndexedDatasetWriter(p, optimal_token_dtype(vocab_size)))
                   for p in prefixes]
        progress.started = time.perf_counter()
        next_report = config.log_interval
        for batch in _encoded_batches(options, batch_lines(reader), config.workers, stack):
            if batch.bad_lines:
                if not config.skip_bad_lines:
                    raise BadInputError(f"{batch.bad_lines[0]} (use --skip-bad-lines to skip "
                                        "such lines)")
                for bad in batch.bad_lines:
                    if len(bad_lines) < LOGGED_BAD_LINES:
                        logger.warning("skipping %s", bad)
                        bad_lines.append(bad)
            for writer, encoded in zip(writers, batch.keys):
                writer.add_documents(encoded.tokens, encoded.sequence_lengths,
                                     encoded.sequences_per_document)
            progress.documents += batch.num_documents
            progress.tokens += batch.num_tokens
            progress.text_bytes += batch.text_bytes
            progress.bad_lines += len(batch.bad_lines)
            progress.blank_lines += batch.blank_lines
            progress.empty_documents += batch.empty_documents
            progress.input_bytes_read = reader.bytes_read
            if config.log_interval > 0 and progress.documents >= next_report:
                report(format_progress(progress))
                next_report = (progress.documents // config.log_interval + 1) \
                    * config.log_interval
        if progress.tokens == 0:
            # Empty documents are written (see document_encoder.py), but datasets holding no
            # token at all are useless for training: most likely the wrong input or key.
            what = (f"no tokens in {', '.join(files)} ({progress.empty_documents:,} "
                    "documents have no tokens)" if progress.documents
                    else f"no documents in {', '.join(files)}")
            raise BadInputError(f"{what}; nothing written")
        for writer in writers:
            writer.finalize()
    report(format_summary(progress))
    return PreprocessResult(prefixes, progress, bad_lines)
