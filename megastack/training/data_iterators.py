"""Micro-batch iterators over megatron-core datasets, sharded over data-parallel ranks.

The order of samples in a global batch is the same at every layout: the global batch is the
next ``global_batch_size`` samples, and DP rank r takes micro-batches r, r+DP, ... of it (as
Megatron-LM's pretraining sampler does), so runs at different layouts see the same data.
"""

from __future__ import annotations

from functools import partial
from typing import Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset


class PretrainingBatchSampler:
    """Yields index lists of one micro-batch for this DP rank, starting after consumed samples."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 dp_rank: int, dp_size: int):
        if consumed_samples >= total_samples:
            raise ValueError(
                f"{consumed_samples} samples were already consumed but the dataset holds only "
                f"{total_samples}: raise --train-iters or add data"
            )
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size

    def __len__(self) -> int:
        return (self.total_samples - self.consumed_samples) // (self.micro_batch_size * self.dp_size)

    def __iter__(self) -> Iterator[list[int]]:
        step = self.micro_batch_size * self.dp_size
        start = self.dp_rank * self.micro_batch_size
        for base in range(self.consumed_samples, self.total_samples - step + 1, step):
            yield list(range(base + start, base + start + self.micro_batch_size))


def _collate(samples: list[dict], attention_mask: bool = False) -> dict[str, torch.Tensor]:
    keys = ("tokens", "labels", "loss_mask", "position_ids")
    # GPTDataset's [1, s, s] mask is only worth moving when it differs per sample
    # (--reset-attention-mask); otherwise attention is causal and megatron-core needs no mask.
    if attention_mask:
        keys += ("attention_mask",)
    return {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in keys}


def build_iterator(dataset: Optional[Dataset], consumed_samples: int, micro_batch_size: int,
                   dp_rank: int, dp_size: int, num_workers: int = 0,
                   attention_mask: bool = False) -> Optional[Iterator]:
    if dataset is None:
        return None
    sampler = PretrainingBatchSampler(len(dataset), consumed_samples, micro_batch_size,
                                      dp_rank, dp_size)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                        collate_fn=partial(_collate, attention_mask=attention_mask),
                        pin_memory=torch.cuda.is_available(),
                        persistent_workers=num_workers > 0)
    return iter(loader)

