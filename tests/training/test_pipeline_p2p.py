"""megatron-core's pipeline send/receive settings per layout (the runs themselves are in
test_parallel_training: interleaved with and without overlap, 1F1B)."""

import pytest

from megastack.config import ParallelConfig
from megastack.model import pipeline_p2p_options


@pytest.mark.parametrize("pp, vp, overlap, cuda, expected", [
    (2, 2, True, True, (True, False)),    # Megatron-LM's default with interleaving
    (4, 2, False, True, (False, True)),   # --no-overlap-p2p-communication: batched on NCCL
    (2, 2, False, True, (False, False)),  # ... except PP=2 interleaved (prev == next)
    (2, None, True, True, (False, True)),  # 1F1B cannot overlap: batched
    (4, 2, False, False, (False, False)),  # gloo: never batched
])
def test_p2p_options(pp, vp, overlap, cuda, expected):
    options = pipeline_p2p_options(ParallelConfig(pipeline_model_parallel_size=pp), vp, overlap,
                                   cuda)
    assert (options["overlap_p2p_comm"], options["batch_p2p_comm"]) == expected
