"""Per-GPU memory estimate of a training phase, stage by stage.

What is counted, per GPU (one TP rank of one pipeline stage):
- weights: 2 bytes/parameter in bf16, 4 in fp32;
- gradients: megatron DDP's contiguous main-grad buffer, fp32 (4 bytes/parameter; Megatron
  accumulates and reduces bf16 models' gradients in fp32); not sharded by the distributed
  optimizer, which reduce-scatters into it;
- Adam states: fp32 master weights (bf16 only), first and second moments: 12 bytes/parameter in
  bf16, 8 in fp32; the distributed optimizer shards them over the data-parallel ranks;
- activations at the pipeline schedule's peak: 1F1B keeps min(PP - p, M) micro-batches in
  flight on stage p; the interleaved schedule keeps min(2*(PP-p-1) + (V-1)*PP + 1, M*V) chunk
  micro-batches (megatron-core's warm-up count plus the one in steady state); each holds the
  layers of one chunk (`activations.py`). Full recomputation adds one layer rebuilt in backward.
  Stage 0 adds the token ids (8 bytes/token), the last stage the final-norm and output-layer
  inputs and the cross-entropy's fp32 softmax over the vocabulary shard (4 bytes/logit, one
  micro-batch: the last stage runs each micro-batch's backward right after its forward) plus
  the bf16 logits alive while they are converted;
- a fixed reserve for the CUDA context, NCCL buffers and allocator fragmentation.
Not counted: the data batch and attention mask, communication buckets beyond the gradient
buffer, the optimizer step's temporaries, and backward's temporaries (gradients of the scores
in unfused attention, the logits' gradient). On an H200, 24L2048H in bf16 at micro-batch 4
(local spec) peaked at 79.3 GiB allocated against 76.7 GiB estimated before the reserve
(benchmarks/trainer/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .activations import layer_activation_bytes, layer_activation_terms
from .layout import RECOMPUTE_GRANULARITIES, PhaseLayout
from .parameters import stage_parameter_counts

GIB = 2**30
DEFAULT_RESERVE_BYTES = 2 * GIB


@dataclass(frozen=True)
class BytesPerParameter:
    weights: int
    gradients: int
    optimizer: int  # Adam states before distributed-optimizer sharding


def bytes_per_parameter(half_precision: bool) -> BytesPerParameter:
    """bf16 and fp16 keep the same bytes: 16-bit weights, fp32 main weights and grads."""
    if half_precision:
        return BytesPerParameter(weights=2, gradients=4, optimizer=12)
    return BytesPerParameter(weights=4, gradients=4, optimizer=8)


@dataclass(frozen=True)
class StageMemory:
    """Bytes one GPU of pipeline stage `stage` needs; activations for every recompute choice."""

    stage: int
    parameters: int
    weights: float
    gradients: float
    optimizer_replicated: float
    optimizer_distributed: float
    in_flight_microbatches: int  # chunk micro-batches kept at the schedule's peak
    activations: dict[Optional[str], float] = field(default_factory=dict)
    activations_per_microbatch: dict[Optional[str], float] = field(default_factory=dict)

    def optimizer(self, use_distributed_optimizer: bool) -> float:
        return self.optimizer_distributed if use_distributed_optimizer else self.optimizer_replicated

    def total(self, use_distributed_optimizer: bool, recompute_granularity: Optional[str],
              reserve: float) -> float:
        return (self.weights + self.gradients + self.optimizer(use_distributed_optimizer)
                + self.activations[recompute_granularity] + reserve)


@dataclass(frozen=True)
class PhaseMemory:
    """Every stage's estimate, and the options the phase is configured with."""

    stages: list[StageMemory]
    use_distributed_optimizer: bool
    recompute_granularity: Optional[str]
    reserve: float

    def stage_total(self, stage: StageMemory, *, use_distributed_optimizer: Optional[bool] = None,
                    recompute_granularity: Optional[str] = "configured") -> float:
        dist = self.use_distributed_optimizer if use_distributed_optimizer is None else use_distributed_optimizer
        rc = self.recompute_granularity if recompute_granularity == "configured" else recompute_granularity
        return stage.total(dist, rc, self.reserve)

    @property
    def worst_stage(self) -> StageMemory:
        return max(self.stages, key=self.stage_total)

    @property
    def peak(self) -> float:
        return self.stage_total(self.worst_stage)


def in_flight_chunk_microbatches(layout: PhaseLayout, stage: int) -> int:
    """Chunk micro-batches whose activations stage `stage` holds at once (megatron-core schedules)."""
    pp, m, v = layout.pipeline_parallel_size, layout.num_microbatches, layout.virtual_pipeline_size
    if pp == 1:
        return 1  # forward_backward_no_pipelining: forward and backward one micro-batch at a time
    if layout.interleaved:
        warmup = 2 * (pp - stage - 1) + (v - 1) * pp
    else:
        warmup = pp - stage - 1
    return min(warmup + 1, m * v)


def _stage_activations(layout: PhaseLayout, stage: int, recompute: Optional[str]) -> tuple[float, float]:
    """(bytes at the peak, bytes of one micro-batch through all of the stage's layers)."""
    model, t, sp = layout.model, layout.tensor_parallel_size, layout.sequence_parallel
    a = 2 if layout.half_precision else 4
    terms = layer_activation_terms(
        model, layout.micro_batch_size, activation_bytes=a,
        core_attention="flash" if layout.transformer_impl == "transformer_engine" else "unfused",
        unfused_glu=layout.transformer_impl != "fused",
    )
    per_layer = layer_activation_bytes(terms, t, sp, recompute, layout.recompute_modules)
    in_flight = in_flight_chunk_microbatches(layout, stage)
    stage_layers = layout.stage_layers[stage]
    peak = in_flight * (stage_layers // layout.virtual_pipeline_size) * per_layer
    if recompute == "full":
        peak += layer_activation_bytes(terms, t, sp, None)
    s, b = model.seq_length, layout.micro_batch_size
    if stage == 0:
        peak += 8 * s * b * in_flight  # token ids for the embedding's backward (an upper bound)
    if stage == layout.pipeline_parallel_size - 1:
        hidden = a * s * b * model.hidden_size / (t if sp else 1)
        logits = s * b * model.vocab_size / t
        peak += 2 * hidden + 4 * logits + (a * logits if a != 4 else 0)
    return peak, stage_layers * per_layer


def estimate_memory(layout: PhaseLayout, reserve_bytes: float = DEFAULT_RESERVE_BYTES) -> PhaseMemory:
    """Per-stage memory of a validated layout (see `validate_layout`)."""
    per_param = bytes_per_parameter(layout.half_precision)
    dp = layout.data_parallel_size
    stages = []
    for params in stage_parameter_counts(layout.model, layout.parallel):
        n = params.total
        acts = {rc: _stage_activations(layout, params.stage, rc) for rc in RECOMPUTE_GRANULARITIES}
        stages.append(
            StageMemory(
                stage=params.stage,
                parameters=n,
                weights=n * per_param.weights,
                gradients=n * per_param.gradients,
                optimizer_replicated=n * per_param.optimizer,
                optimizer_distributed=n * per_param.optimizer / dp,
                in_flight_microbatches=in_flight_chunk_microbatches(layout, params.stage),
                activations={rc: v[0] for rc, v in acts.items()},
                activations_per_microbatch={rc: v[1] for rc, v in acts.items()},
            )
        )
    return PhaseMemory(
        stages=stages,
        use_distributed_optimizer=layout.parallel.use_distributed_optimizer,
        recompute_granularity=layout.recompute_granularity,
        reserve=reserve_bytes,
    )
