"""One training phase's layout: the model, how it is split over ranks, and the batch.

`PhaseLayout` holds what the planner needs to know about a phase and derives the sizes Megatron
derives (data-parallel size, micro-batches per step, layers per pipeline stage and per virtual
chunk). `validate_layout` checks everything megatron-core would reject at start-up, so a
cluster job fails in the dry run rather than after it was scheduled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megastack.config import ModelConfig, ParallelConfig

from .activations import DEFAULT_RECOMPUTE_MODULES, RECOMPUTE_MODULES

RECOMPUTE_GRANULARITIES = (None, "selective", "full")
TRANSFORMER_IMPLS = ("auto", "local", "transformer_engine", "fused")


@dataclass(frozen=True)
class PhaseLayout:
    """A training phase as launched: `world_size` ranks running `model` under `parallel`.

    `recompute_granularity` is Megatron's --recompute-granularity (None, "selective", "full";
    "full" means the uniform method with one layer per checkpoint); `recompute_modules` the
    selective recomputation's --recompute-modules. `bf16` or `fp16`: 16-bit weights and
    activations (the same bytes either way). `transformer_impl` is
    the trainer's --transformer-impl: "transformer_engine" runs flash attention (no s x s scores
    are stored); "local" and "fused" (megastack's kernels) run megatron-core's unfused
    DotProductAttention; "auto" is estimated as unfused, an upper bound where it picks TE.
    """

    model: ModelConfig
    parallel: ParallelConfig
    world_size: int
    micro_batch_size: int = 1
    global_batch_size: int = 1
    bf16: bool = True
    recompute_granularity: Optional[str] = None
    transformer_impl: str = "local"
    fp16: bool = False
    recompute_modules: tuple[str, ...] = DEFAULT_RECOMPUTE_MODULES

    @property
    def half_precision(self) -> bool:
        return self.bf16 or self.fp16

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else "bf16" if self.bf16 else "fp32"

    @property
    def tensor_parallel_size(self) -> int:
        return self.parallel.tensor_model_parallel_size

    @property
    def pipeline_parallel_size(self) -> int:
        return self.parallel.pipeline_model_parallel_size

    @property
    def data_parallel_size(self) -> int:
        return self.world_size // (self.tensor_parallel_size * self.pipeline_parallel_size)

    @property
    def virtual_pipeline_size(self) -> int:
        """Model chunks per pipeline stage (1 without interleaving)."""
        return self.parallel.virtual_pipeline_size(self.model.num_layers) or 1

    @property
    def interleaved(self) -> bool:
        return self.parallel.virtual_pipeline_size(self.model.num_layers) is not None

    @property
    def stage_layers(self) -> tuple[int, ...]:
        """Transformer layers held by each pipeline stage, first to last."""
        return self.parallel.stage_num_layers(self.model.num_layers)

    @property
    def layers_per_stage(self) -> int:
        """The most layers any pipeline stage holds (all of them hold this many unless the
        stages are uneven)."""
        return max(self.stage_layers)

    @property
    def layers_per_chunk(self) -> int:
        """Layers per virtual chunk with interleaving (which needs even stages)."""
        return self.layers_per_stage // self.virtual_pipeline_size

    @property
    def num_microbatches(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.data_parallel_size)

    @property
    def sequence_parallel(self) -> bool:
        """Megatron only shards the sequence when TP > 1 (config.py says so at validation)."""
        return self.parallel.sequence_parallel and self.tensor_parallel_size > 1


def validate_layout(layout: PhaseLayout) -> None:
    """Raise ValueError naming the flag for any layout megatron-core would refuse."""
    model, tp, pp = layout.model, layout.tensor_parallel_size, layout.pipeline_parallel_size
    if layout.world_size < 1:
        raise ValueError(f"world size must be >= 1 (--nnodes x --nproc-per-node), got {layout.world_size}")
    for flag, size in (("--tensor-model-parallel-size", tp), ("--pipeline-model-parallel-size", pp)):
        if size < 1:
            raise ValueError(f"{flag} must be >= 1, got {size}")
    layout.parallel.validate(model, layout.world_size)
    if model.vocab_size % tp != 0:
        raise ValueError(
            f"--vocab-size {model.vocab_size} is not divisible by --tensor-model-parallel-size {tp}: "
            f"the embedding and output layer are split by vocabulary rows; pad the vocabulary to a "
            f"multiple of {tp}"
        )
    if layout.sequence_parallel and model.seq_length % tp != 0:
        raise ValueError(
            f"--sequence-parallel splits --seq-length {model.seq_length} over "
            f"--tensor-model-parallel-size {tp}: use a sequence length divisible by {tp}"
        )
    if layout.micro_batch_size < 1:
        raise ValueError(f"--micro-batch-size must be >= 1, got {layout.micro_batch_size}")
    per_step = layout.micro_batch_size * layout.data_parallel_size
    if layout.global_batch_size < per_step or layout.global_batch_size % per_step != 0:
        raise ValueError(
            f"--global-batch-size {layout.global_batch_size} is not a multiple of --micro-batch-size "
            f"{layout.micro_batch_size} x data-parallel size {layout.data_parallel_size} "
            f"(= world {layout.world_size} / (TP {tp} x PP {pp})) = {per_step}: use a multiple of {per_step}"
        )
    if layout.interleaved:
        m = layout.num_microbatches
        # megatron-core's interleaved schedule groups micro-batches by PP (schedules.py).
        if m < pp or m % pp != 0:
            raise ValueError(
                f"--num-layers-per-virtual-pipeline-stage needs the {m} micro-batches per step "
                f"(--global-batch-size / (--micro-batch-size x DP)) to be a multiple of "
                f"--pipeline-model-parallel-size {pp}: raise --global-batch-size or drop interleaving"
            )
    if layout.recompute_granularity not in RECOMPUTE_GRANULARITIES:
        raise ValueError(
            f"--recompute-granularity must be selective or full (or unset), got "
            f"{layout.recompute_granularity!r}"
        )
    unknown = set(layout.recompute_modules) - set(RECOMPUTE_MODULES)
    if unknown:
        raise ValueError(f"--recompute-modules {' '.join(sorted(unknown))}: the planner models "
                         f"{', '.join(RECOMPUTE_MODULES)}")
    if layout.transformer_impl not in TRANSFORMER_IMPLS:
        raise ValueError(
            f"--transformer-impl must be one of {', '.join(TRANSFORMER_IMPLS)}, got "
            f"{layout.transformer_impl!r}"
        )
    # The trainer refuses sequence parallelism on torch norms (megastack.model). "auto" resolves
    # on the machine that trains, so only an explicit local or fused layout is known to fail.
    if layout.sequence_parallel and layout.transformer_impl in ("local", "fused"):
        from megastack.layer_impl import check_sequence_parallel

        check_sequence_parallel(layout.transformer_impl, tp, True)
