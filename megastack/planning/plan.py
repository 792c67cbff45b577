"""Plans for a training phase and for a whole G_stack recipe (small -> grow -> large).

A plan validates the layout, places layers on pipeline stages, counts each GPU's parameters and
estimates its memory. Layout errors raise ValueError; a phase that will not fit the device is a
warning (logged and kept on the plan) with the settings that would make it fit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .layout import PhaseLayout, validate_layout
from .memory import DEFAULT_RESERVE_BYTES, GIB, PhaseMemory, estimate_memory
from .parameters import StageParameters, stage_parameter_counts
from .stage_map import ChunkPlacement, layout_placements

logger = logging.getLogger(__name__)

H100_MEMORY_BYTES = 80 * GIB


@dataclass(frozen=True)
class PhasePlan:
    name: str
    layout: PhaseLayout
    placements: list[ChunkPlacement]
    parameters: list[StageParameters]
    memory: PhaseMemory
    device_memory: float
    warnings: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.memory.peak <= self.device_memory


@dataclass(frozen=True)
class GrowthPlan:
    """G_stack: train `small`, stack its layers into `large`'s depth, keep training `large`."""

    small: PhasePlan
    large: PhasePlan

    @property
    def grown_weights_bytes(self) -> int:
        """Size of the grown checkpoint's model weights (what the grow tool writes)."""
        bytes_per_weight = 2 if self.large.layout.half_precision else 4
        return self.large.layout.model.num_parameters() * bytes_per_weight

    @property
    def phases(self) -> list[PhasePlan]:
        return [self.small, self.large]


def plan_phase(
    name: str,
    layout: PhaseLayout,
    *,
    device_memory_bytes: float = H100_MEMORY_BYTES,
    reserve_bytes: float = DEFAULT_RESERVE_BYTES,
) -> PhasePlan:
    try:
        validate_layout(layout)
    except ValueError as err:
        raise ValueError(f"phase {name!r}: {err}") from None
    memory = estimate_memory(layout, reserve_bytes)
    plan = PhasePlan(
        name=name,
        layout=layout,
        placements=layout_placements(layout.model.num_layers, layout.parallel),
        parameters=stage_parameter_counts(layout.model, layout.parallel),
        memory=memory,
        device_memory=device_memory_bytes,
        warnings=_memory_warnings(name, memory, device_memory_bytes),
    )
    for message in plan.warnings:
        logger.warning(message)
    return plan


def plan_growth(
    small: PhaseLayout,
    large: PhaseLayout,
    *,
    device_memory_bytes: float = H100_MEMORY_BYTES,
    reserve_bytes: float = DEFAULT_RESERVE_BYTES,
) -> GrowthPlan:
    if large.model.num_layers <= small.model.num_layers:
        raise ValueError(
            f"the grown model ({large.model.num_layers} layers) must be deeper than the small "
            f"model ({small.model.num_layers} layers): check --model and the grown model"
        )
    options = dict(device_memory_bytes=device_memory_bytes, reserve_bytes=reserve_bytes)
    return GrowthPlan(small=plan_phase("small", small, **options), large=plan_phase("large", large, **options))


def _memory_warnings(name: str, memory: PhaseMemory, capacity: float) -> list[str]:
    worst = memory.worst_stage
    peak = memory.stage_total(worst)
    if peak <= capacity:
        return []
    remedies = []
    if not memory.use_distributed_optimizer:
        alt = memory.stage_total(worst, use_distributed_optimizer=True)
        remedies.append(f"--use-distributed-optimizer: {alt / GIB:.1f} GiB")
    for rc in ("selective", "full"):
        if rc != memory.recompute_granularity:
            alt = memory.stage_total(worst, recompute_granularity=rc)
            if alt < peak:
                # The planner's full recompute keeps each layer's input only (uniform, 1 layer).
                flags = rc if rc == "selective" else \
                    "full --recompute-method uniform --recompute-num-layers 1"
                remedies.append(f"--recompute-granularity {flags}: {alt / GIB:.1f} GiB")
    remedies.append("or a larger --tensor-model-parallel-size / --pipeline-model-parallel-size "
                    "or a smaller --micro-batch-size")
    return [
        f"phase {name!r} will not fit: pipeline stage {worst.stage} needs about {peak / GIB:.1f} GiB "
        f"per GPU, above {capacity / GIB:.0f} GiB. Options: " + "; ".join(remedies)
    ]
