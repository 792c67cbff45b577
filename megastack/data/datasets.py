"""Train/valid/test GPT datasets through megatron-core's BlendedMegatronDatasetBuilder.

Called on every rank. megatron-core already builds on rank 0 first, then barriers, then builds on
the other ranks (which hit the index cache rank 0 wrote), whenever torch.distributed is
initialized; without it everything builds in-process. So ``is_built_on_rank`` is simply "yes".
With several nodes, put ``path_to_cache`` (default: next to the data) on a filesystem all nodes
share: megatron-core writes its cache files without locking, and only global rank 0 builds first.
"""

import contextlib
import logging
import os
from typing import Iterator, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def parse_data_path(data_path: Sequence[str],
                    flag: str = "--data-path") -> Tuple[List[str], Optional[List[float]]]:
    """Megatron's --data-path (or a per-split `flag`): ``[p1, p2, ...]`` or
    ``[w1, p1, w2, p2, ...]``; entries may also hold several space-separated words (as when the
    flag value was one quoted string)."""
    from megatron.core.datasets.utils import get_blend_from_list

    words = [w for entry in data_path for w in str(entry).split()]
    if not words:
        raise ValueError(f"{flag} is empty: give dataset prefixes (PATH for PATH.bin/.idx) "
                         "or 'weight prefix' pairs")
    if len(words) % 2 == 1 and any(_is_number(w) for w in words[::2]):
        # megatron-core would take the odd list as plain prefixes and look for "0.3.bin".
        raise ValueError(f"{flag} {' '.join(words)}: {len(words)} words, but a weighted "
                         f"blend takes 'weight prefix' pairs (e.g. {flag} 0.3 a_text_document "
                         f"0.7 b_text_document); give every prefix its weight, or no weights")
    prefixes, weights = get_blend_from_list(words)
    if weights is not None and any(w <= 0 for w in weights):
        raise ValueError(f"{flag} weights must be positive, got {weights}")
    return prefixes, weights


def check_prefixes_exist(prefixes: Sequence[str], flag: str = "--data-path") -> None:
    """Each prefix has its .bin and .idx, and the .bin is as long as the .idx says: megatron-core
    fails on a truncated pair with "buffer is smaller than requested size", naming no file."""
    from megastack.data.indexed_writer import check_bin_size, read_index

    for prefix in prefixes:
        for suffix in (".bin", ".idx"):
            if not os.path.isfile(prefix + suffix):
                raise ValueError(f"{flag} {prefix!r}: {prefix + suffix} does not exist "
                                 "(a prefix names PATH for PATH.bin/PATH.idx, e.g. "
                                 "out/corpus_text_document)")
        try:
            check_bin_size(prefix, read_index(prefix))
        except ValueError as err:
            raise ValueError(f"{flag} {prefix!r}: {err}") from None


def check_splits_have_tokens(prefixes: Sequence[str], split: str) -> None:
    """Every split with a nonzero --split weight must get tokens from every dataset:
    megatron-core cuts each dataset's sequences at round(fraction * count), and a split that
    gets none makes GPTDataset count epochs forever (a silent hang, e.g. the 0.1% test split
    of '969,30,1' on a corpus of under 500 documents)."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix, parse_and_normalize_split)
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    bounds = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    for prefix in prefixes:
        dataset = IndexedDataset(prefix, mmap=True)  # its index buffer lives as long as it does
        lengths = dataset.sequence_lengths
        count = len(lengths)
        for name, part in zip(("train", "validation", "test"), bounds):
            if part is None:
                continue
            beg, end = (int(round(edge * float(count))) for edge in part)
            if int(lengths[beg:end].sum()) == 0:
                raise ValueError(
                    f"--split {split!r} gives the {name} split {end - beg} of the {count} "
                    f"sequences of {prefix}, with no tokens: give it a larger share (e.g. "
                    f"--split 90,5,5) or weight 0 (e.g. --split 95,5,0)")


def check_token_ids_fit(prefixes: Sequence[str], vocab_size: int,
                        tokens_to_read: int = 1 << 20, flag: str = "--data-path") -> None:
    """Token ids must index the model's embedding (`vocab_size` rows, padded): data tokenized
    with a larger vocabulary than this run's tokenizer fails deep in the embedding (an
    IndexError on CPU, a device-side assert on GPU). The first ~1M tokens of each dataset (and
    its last sequence) catch that at a negligible cost."""
    import numpy as np
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    for prefix in prefixes:
        dataset = IndexedDataset(prefix, mmap=True)
        count = len(dataset.sequence_lengths)
        if count == 0:
            continue
        read, top, i = 0, -1, 0
        while i < count and read < tokens_to_read:
            seq = dataset[i]
            if len(seq):
                top = max(top, int(np.max(seq)))
            read, i = read + len(seq), i + 1
        last = dataset[count - 1]
        if len(last):
            top = max(top, int(np.max(last)))
        if top >= vocab_size:
            raise ValueError(
                f"{flag} {prefix}: holds token id {top}, beyond the model's vocabulary "
                f"of {vocab_size} (the tokenizer's, padded): it was preprocessed with another "
                f"tokenizer; pass that one "
                f"(--tokenizer-type/--tokenizer-model/--vocab-size) or preprocess again with "
                f"this one")


def check_has_tokens(prefixes: Sequence[str], flag: str) -> None:
    """A per-split dataset without tokens would make GPTDataset count epochs forever."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    for prefix in prefixes:
        dataset = IndexedDataset(prefix, mmap=True)  # its index buffer lives as long as it does
        if int(dataset.sequence_lengths.sum()) == 0:
            raise ValueError(f"{flag} {prefix}: the dataset holds no tokens")


# Megatron-LM's flags for datasets given per split (instead of --data-path and --split).
PER_SPLIT_FLAGS = ("--train-data-path", "--valid-data-path", "--test-data-path")


def _validate_split(split: str) -> str:
    try:
        parts = [float(p) for p in split.replace("/", ",").split(",")]
    except ValueError:
        parts = []
    if not parts or len(parts) > 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise ValueError(f"--split {split!r} must be up to three non-negative weights such as "
                         "'969,30,1'")
    return split


@contextlib.contextmanager
def _rank_zero_without_process_group() -> Iterator[None]:
    """megatron-core 0.16.1's BlendedDataset calls ``torch.distributed.get_rank()`` without
    checking ``is_initialized()`` when it writes its cache; a single process is rank 0."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    original = dist.get_rank
    dist.get_rank = lambda group=None: 0
    try:
        yield
    finally:
        dist.get_rank = original


def build_gpt_datasets(*, data_path: Optional[Sequence[str]], split: str, seq_length: int,
                       seed: int, train_valid_test_num_samples: Tuple[int, int, int], tokenizer,
                       mock: bool = False, path_to_cache: Optional[str] = None,
                       reset_position_ids: bool = False, reset_attention_mask: bool = False,
                       eod_mask_loss: bool = False, model_vocab_size: Optional[int] = None,
                       per_split_data_path: Optional[Sequence[Sequence[str]]] = None,
                       mmap_bin_files: bool = True, num_dataset_builder_threads: int = 1,
                       multiple_validation_sets: bool = False, full_validation: bool = False):
    """(train, valid, test) megatron-core GPT datasets; an entry is None when its split is empty.

    Each item is a dict of torch tensors: tokens, labels, loss_mask, attention_mask,
    position_ids, each ``seq_length`` long. ``mock=True`` ignores ``data_path`` and serves
    MockGPTDataset samples (for smoke tests without data). ``per_split_data_path`` (Megatron's
    --train/--valid/--test-data-path, each possibly empty) replaces ``data_path`` and ``split``.
    With ``model_vocab_size`` (the embedding's padded rows) data holding larger token ids is
    refused up front. ``multiple_validation_sets`` (Megatron-LM's flag) makes valid a list, one
    dataset per --valid-data-path prefix; ``full_validation`` builds the validation split as one
    epoch of its data (its count in ``train_valid_test_num_samples`` is then ignored).
    """
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder)
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

    if seq_length <= 0:
        raise ValueError(f"--seq-length must be positive, got {seq_length}")
    if len(train_valid_test_num_samples) != 3 or any(n < 0 for n in train_valid_test_num_samples):
        raise ValueError("train_valid_test_num_samples must be three non-negative counts, got "
                         f"{train_valid_test_num_samples}")
    blend, blend_per_split = None, None
    if not mock and per_split_data_path is not None:
        if data_path:
            raise ValueError("give --data-path (with --split) or the per-split "
                             f"{'/'.join(PER_SPLIT_FLAGS)}, not both")
        blend_per_split = []
        for flag, words in zip(PER_SPLIT_FLAGS, per_split_data_path):
            if not words:
                blend_per_split.append(None)
                continue
            prefixes, weights = parse_data_path(words, flag)
            check_prefixes_exist(prefixes, flag)
            check_has_tokens(prefixes, flag)
            if model_vocab_size is not None:
                check_token_ids_fit(prefixes, model_vocab_size, flag=flag)
            blend_per_split.append((prefixes, weights))
        if blend_per_split[0] is None:
            raise ValueError(f"{PER_SPLIT_FLAGS[0]} is needed with "
                             f"{' or '.join(PER_SPLIT_FLAGS[1:])}")
        split = None  # megatron-core: the per-split blends take the place of --split
    else:
        split = _validate_split(split)
    if multiple_validation_sets and (blend_per_split is None or blend_per_split[1] is None):
        raise ValueError("--multiple-validation-sets evaluates each --valid-data-path dataset on "
                         "its own: give the validation datasets with --valid-data-path")
    if not mock and blend_per_split is None:
        prefixes, weights = parse_data_path(data_path or [])
        check_prefixes_exist(prefixes)
        check_splits_have_tokens(prefixes, split)
        if model_vocab_size is not None:
            check_token_ids_fit(prefixes, model_vocab_size)
        blend = (prefixes, weights)
    valid_blend = blend if blend_per_split is None else blend_per_split[1]
    if (full_validation or multiple_validation_sets) and valid_blend and valid_blend[1]:
        # megatron-core builds a whole epoch (or separate sets) from unweighted datasets only.
        flag = "--data-path" if blend_per_split is None else "--valid-data-path"
        given = " and ".join(f for f, on in (("--full-validation", full_validation),
                                             ("--multiple-validation-sets",
                                              multiple_validation_sets)) if on)
        raise ValueError(f"{flag} is weighted, but {given} read each validation dataset as it "
                         f"is: give the validation datasets without weights"
                         + (" with --valid-data-path" if blend_per_split is None else ""))
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=blend,
        blend_per_split=blend_per_split,
        split=split,
        path_to_cache=path_to_cache,
        tokenizer=tokenizer,
        reset_position_ids=reset_position_ids,
        reset_attention_mask=reset_attention_mask,
        eod_mask_loss=eod_mask_loss,
        mmap_bin_files=mmap_bin_files,  # False: read the .bin with file reads (Megatron-LM's
                                        # --no-mmap-bin-files, for filesystems that mmap badly)
        num_dataset_builder_threads=num_dataset_builder_threads,
        multiple_validation_sets=multiple_validation_sets, full_validation=full_validation,
    )
    dataset_class = MockGPTDataset if mock else GPTDataset
    sizes = [int(n) for n in train_valid_test_num_samples]
    if full_validation:
        sizes[1] = None  # megatron-core: no size, one epoch
    with _rank_zero_without_process_group():
        train, valid, test = BlendedMegatronDatasetBuilder(
            dataset_class, sizes, lambda: True, config).build()
    if multiple_validation_sets and not isinstance(valid, list):
        valid = [valid]  # megatron-core returns a lone validation dataset as it is
    return train, valid, test


def validation_set_names(prefixes: Sequence[str]) -> list[str]:
    """How each of --multiple-validation-sets' datasets is named in the logs: its file name
    (as Megatron-LM), or the whole prefix where two file names are the same."""
    names = [os.path.basename(p) for p in prefixes]
    if len(set(names)) < len(names):
        return list(prefixes)
    return names
