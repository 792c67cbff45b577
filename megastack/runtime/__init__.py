"""Process groups, seeds, and the CPU compatibility layer for megatron-core."""

from megastack.runtime.distributed import RankInfo, barrier, initialize, set_seed, shutdown

__all__ = ["RankInfo", "barrier", "initialize", "set_seed", "shutdown"]
