"""Where each layer of a grown model comes from and where it will live.

A row says: target layer t is filled from source layer s and, at the target layout, is held by
pipeline stage p (model chunk c with interleaving). The stage/chunk assignment is megatron-core's
(`megastack.planning.stage_map`): with an even split chunk c of stage p holds layers
[(c*PP + p)*Lv, (c*PP + p + 1)*Lv) with Lv = L / (PP * V); uneven stages hold consecutive runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from megastack.config import ParallelConfig
from megastack.planning.stage_map import layout_placements


@dataclass(frozen=True)
class LayerPlacement:
    target_layer: int
    source_layer: int
    stage: int
    chunk: int


def layer_stage_map(num_layers: int, parallel: ParallelConfig) -> list[tuple[int, int]]:
    """[(stage, chunk)] indexed by 0-based layer, for a layout that places every layer."""
    where: list[Optional[tuple[int, int]]] = [None] * num_layers
    for placement in layout_placements(num_layers, parallel):
        for layer in placement.layers:
            if layer < num_layers:
                where[layer] = (placement.stage, placement.chunk)
    missing = [i for i, w in enumerate(where) if w is None]
    if missing:
        raise ValueError(f"pipeline size {parallel.pipeline_model_parallel_size} (virtual stages "
                         f"of {parallel.num_layers_per_virtual_pipeline_stage} layers) does not "
                         f"place layers {missing} of {num_layers}: the layout must divide the "
                         f"layer count")
    return [w for w in where if w is not None]


def growth_layer_map(source_of_target: Sequence[int],
                     parallel: ParallelConfig) -> list[LayerPlacement]:
    """One row per target layer: its source layer and its stage (and chunk) at the target."""
    stages = layer_stage_map(len(source_of_target), parallel)
    return [LayerPlacement(t, int(s), stage, chunk)
            for t, (s, (stage, chunk)) in enumerate(zip(source_of_target, stages))]


def format_layer_map(rows: Sequence[LayerPlacement], interleaved: bool = False) -> str:
    """A table "target layer -> source layer -> stage (chunk)", one line per target layer."""
    where_header = "stage (chunk)" if interleaved else "stage"
    lines = [f"{'target layer':>12}  ->  {'source layer':>12}  ->  {where_header}"]
    for r in rows:
        where = f"{r.stage} ({r.chunk})" if interleaved else f"{r.stage}"
        lines.append(f"{r.target_layer:>12}  ->  {r.source_layer:>12}  ->  {where}")
    return "\n".join(lines)
