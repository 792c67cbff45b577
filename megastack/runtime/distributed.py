"""Process groups and seeds: NCCL on GPUs, gloo (through the CPU compat layer) without."""

from __future__ import annotations

import datetime
import logging
import os
import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from megastack.config import ParallelConfig
from megastack.runtime import cpu_compat, mcore_patches

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    tp_size: int
    pp_size: int
    dp_size: int
    device: torch.device

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def is_logging_rank(self) -> bool:
        # Megatron-LM logs from the last rank: it holds the loss (last pipeline stage).
        return self.rank == self.world_size - 1


def init_process_group(timeout_minutes: int = 10) -> torch.device:
    """Join the torchrun job (or make a 1-process job); return this rank's device."""
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        cpu_compat.enable()
        device = torch.device("cpu")
    if dist.is_initialized():
        return device
    backend = "nccl" if use_cuda else "gloo"
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if "RANK" in os.environ:  # launched by torchrun (or another env:// launcher)
        dist.init_process_group(backend=backend, timeout=timeout)
    else:
        # Plain `python -m megastack.pretrain` (or a test): a world of one. An in-memory store
        # needs no port, and the environment is left alone so child launches don't inherit it.
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1,
                                timeout=timeout)
    return device


def initialize(parallel: ParallelConfig, num_layers: int, seed: int,
               timeout_minutes: int = 10) -> RankInfo:
    """Process groups, megatron-core's model-parallel state and Megatron-style seeds.
    `timeout_minutes` (--distributed-timeout-minutes) bounds every collective, including the
    barriers behind which rank 0 builds dataset indices or writes a checkpoint."""
    from megatron.core import parallel_state

    device = init_process_group(timeout_minutes)
    mcore_patches.apply()
    world_size = dist.get_world_size()
    tp, pp = parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_size(num_layers),
    )
    info = RankInfo(
        rank=dist.get_rank(),
        world_size=world_size,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        tp_size=tp,
        pp_size=pp,
        dp_size=parallel_state.get_data_parallel_world_size(),
        device=device,
    )
    set_seed(seed, info.pp_rank)
    return info


def set_seed(seed: int, pp_rank: int) -> None:
    """Megatron's seeding: identical across TP and DP ranks, offset by 100 per pipeline rank."""
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    seed = seed + 100 * pp_rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed, force_reset_rng=True)


def shutdown() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(group: Optional[dist.ProcessGroup] = None) -> None:
    if dist.is_initialized():
        dist.barrier(group=group)
