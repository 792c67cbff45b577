"""Memory estimates for hand-computed cases, and in-flight micro-batches against megatron-core."""

from types import SimpleNamespace

import pytest

from megastack.config import ModelConfig, ParallelConfig
from megastack.planning import (
    GIB, PhaseLayout, estimate_memory, in_flight_chunk_microbatches, stage_parameter_counts,
)

TINY = ModelConfig.from_name("tiny-2l")  # h 64, 4 heads, 2 groups, f 176, vocab 512, seq 64


def test_tiny_fp32_single_gpu_by_hand():
    layout = PhaseLayout(TINY, ParallelConfig(), world_size=1, micro_batch_size=1, global_batch_size=1,
                         bf16=False, transformer_impl="local")
    mem = estimate_memory(layout, reserve_bytes=0)
    (stage,) = mem.stages
    layer = 64 * 128 + 64 * 64 + 64 * 352 + 176 * 64 + 2 * 64    # qkv, proj, fc1, fc2, 2 norms
    params = 2 * layer + 512 * 64 + 64 + 512 * 64                # + embedding, final norm, output
    assert stage.parameters == params == TINY.num_parameters()
    assert (stage.weights, stage.gradients, stage.optimizer_replicated) == (4 * params, 4 * params, 8 * params)
    sbh = 64 * 64
    per_layer = (4 * 4 * sbh                      # norm inputs, qkv and fc1 inputs (fp32)
                 + 3 * 4 * sbh                    # q and expanded k, v
                 + 4 * sbh + 4 * 64 * 352 + 4 * 64 * 176  # proj input, SwiGLU input, fc2 input
                 + 2 * 4 * 64 * 176               # silu(gate) and up + offset (unfused SwiGLU)
                 + 4 * 4 * 64 * 64)               # fp32 softmax output, 4 heads
    extras = 8 * 64 + 2 * 4 * sbh + 4 * 64 * 512  # token ids; final norm + output inputs; logits
    assert stage.activations[None] == 2 * per_layer + extras
    assert mem.peak == 16 * params + 2 * per_layer + extras


def test_llama2_7b_bytes_per_parameter():
    model = ModelConfig.from_name("llama2-7b")
    n = model.num_parameters()
    for dist_opt, optimizer in [(False, 12 * n), (True, 12 * n / 8)]:
        layout = PhaseLayout(model, ParallelConfig(use_distributed_optimizer=dist_opt), world_size=8,
                             global_batch_size=8, bf16=True)
        mem = estimate_memory(layout)
        (stage,) = mem.stages
        assert (stage.weights, stage.gradients) == (2 * n, 4 * n)
        assert stage.optimizer(dist_opt) == optimizer


def test_tensor_parallel_split_by_hand():
    # TP 2: matrices and vocabulary rows halve, the 2 norms per layer and the final norm do not.
    model = ModelConfig.from_name("tiny-2l")
    (tp2,) = stage_parameter_counts(model, ParallelConfig(tensor_model_parallel_size=2))
    matrices = 64 * 128 + 64 * 64 + 64 * 352 + 176 * 64
    assert tp2.transformer_layers == 2 * (matrices // 2 + 2 * 64)
    assert (tp2.embedding, tp2.output_layer, tp2.final_norm) == (256 * 64, 256 * 64, 64)


def test_sequence_parallel_and_recompute_shrink_activations():
    model = ModelConfig.from_name("llama2-7b")
    base = dict(world_size=8, global_batch_size=8, bf16=True, transformer_impl="local")
    no_sp = estimate_memory(PhaseLayout(model, ParallelConfig(tensor_model_parallel_size=8), **base))
    sp = estimate_memory(PhaseLayout(model, ParallelConfig(tensor_model_parallel_size=8, sequence_parallel=True), **base))
    a, b = no_sp.stages[0].activations, sp.stages[0].activations
    assert b[None] < a[None]
    assert b["full"] < b["selective"] < b[None]


@pytest.mark.parametrize("pp,per_chunk,num_microbatches", [
    (2, None, 1), (2, None, 8), (4, None, 2), (4, None, 16), (2, 2, 2), (2, 1, 8), (4, 2, 8), (4, 1, 4),
])
def test_in_flight_microbatches_match_megatron_schedule(pp, per_chunk, num_microbatches):
    from megatron.core.pipeline_parallel.schedules import get_pp_rank_microbatches

    model = ModelConfig.from_name("tiny-8l")
    layout = PhaseLayout(model, ParallelConfig(pipeline_model_parallel_size=pp,
                                               num_layers_per_virtual_pipeline_stage=per_chunk),
                         world_size=pp, global_batch_size=num_microbatches)
    chunks = layout.virtual_pipeline_size
    # (4, 2, 8): a virtual stage of a whole pipeline stage is no interleaving, as in Megatron-LM.
    assert layout.interleaved == (per_chunk is not None and chunks > 1)
    for stage in range(pp):
        comm = SimpleNamespace(pp_group=SimpleNamespace(size=lambda: pp, rank=lambda s=stage: s),
                               virtual_pipeline_model_parallel_size=chunks if layout.interleaved else None)
        total, _, warmup, remaining = get_pp_rank_microbatches(
            num_microbatches, chunks, pp, p2p_communicator=comm)
        expected = warmup + (1 if remaining > 0 else 0)  # steady state adds one before its backward
        assert in_flight_chunk_microbatches(layout, stage) == expected


def test_worst_stage_of_interleaved_7b_is_the_first():
    model = ModelConfig.from_name("llama2-7b")
    layout = PhaseLayout(model, ParallelConfig(2, 2, 4, True, True), world_size=8, global_batch_size=1024,
                         transformer_impl="transformer_engine")
    mem = estimate_memory(layout)
    assert [s.in_flight_microbatches for s in mem.stages] == [2 * 1 + 3 * 2 + 1, 3 * 2 + 1]
    assert mem.worst_stage.stage == 0
    assert 20 * GIB < mem.peak < 40 * GIB


def test_uneven_first_stage_holds_fewer_layers_activations_and_weights():
    """Megatron-LM's --decoder-first-pipeline-num-layers relieves the first stage, which keeps
    the most micro-batches in flight under 1F1B."""
    model = ModelConfig.from_name("llama2-7b")
    even = PhaseLayout(model, ParallelConfig(1, 4), world_size=4, global_batch_size=16)
    uneven = PhaseLayout(model, ParallelConfig(1, 4, decoder_first_pipeline_num_layers=5),
                         world_size=4, global_batch_size=16)
    assert uneven.stage_layers == (5, 9, 9, 9) and even.stage_layers == (8, 8, 8, 8)
    per_mb = [s.activations_per_microbatch[None] for s in estimate_memory(uneven).stages]
    assert per_mb[0] == pytest.approx(per_mb[1] * 5 / 9)
    assert per_mb[1] == pytest.approx(estimate_memory(even).stages[1].activations_per_microbatch[None] * 9 / 8)
    assert estimate_memory(uneven).stages[0].parameters < estimate_memory(even).stages[0].parameters
