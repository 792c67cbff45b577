"""Which transformer layers each pipeline stage (and virtual chunk) holds.

megatron-core (`get_transformer_layer_offset`, even split, no custom layout) gives model chunk
`c` of pipeline stage `p` the `Lv` consecutive layers starting at `(c * PP + p) * Lv`, where
`Lv = L / (PP * V)`. Without interleaving V = 1 and stage `p` holds `[p * L/PP, (p+1) * L/PP)`.
With uneven stages (`stage_layers`, from ParallelConfig.stage_num_layers; no interleaving)
stage `p` holds the next `stage_layers[p]` layers. The word embedding lives in chunk 0 of stage
0; the final norm and output layer in the last chunk of the last stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from megastack.config import ParallelConfig


@dataclass(frozen=True)
class ChunkPlacement:
    """Layers `[first_layer, first_layer + num_layers)` (0-based) in chunk `chunk` of `stage`."""

    stage: int
    chunk: int
    first_layer: int
    num_layers: int
    has_embedding: bool
    has_output_layer: bool

    @property
    def layers(self) -> range:
        return range(self.first_layer, self.first_layer + self.num_layers)


def chunk_placements(
    num_layers: int, pipeline_parallel_size: int, layers_per_virtual_stage: Optional[int] = None,
    stage_layers: Optional[Sequence[int]] = None,
) -> list[ChunkPlacement]:
    """All (stage, chunk) placements, ordered by stage then chunk.

    Assumes a layout that passed `validate_layout` (even divisions, or uneven `stage_layers`
    that sum to `num_layers`).
    """
    pp = pipeline_parallel_size
    if stage_layers is not None:
        assert layers_per_virtual_stage is None and len(stage_layers) == pp
        assert sum(stage_layers) == num_layers, (stage_layers, num_layers)
        starts = [sum(stage_layers[:stage]) for stage in range(pp)]
        return [ChunkPlacement(stage=stage, chunk=0, first_layer=starts[stage],
                               num_layers=stage_layers[stage], has_embedding=stage == 0,
                               has_output_layer=stage == pp - 1) for stage in range(pp)]
    per_stage = num_layers // pp
    per_chunk = layers_per_virtual_stage or per_stage
    chunks = per_stage // per_chunk
    placements = []
    for stage in range(pp):
        for chunk in range(chunks):
            placements.append(
                ChunkPlacement(
                    stage=stage,
                    chunk=chunk,
                    first_layer=(chunk * pp + stage) * per_chunk,
                    num_layers=per_chunk,
                    has_embedding=stage == 0 and chunk == 0,
                    has_output_layer=stage == pp - 1 and chunk == chunks - 1,
                )
            )
    return placements


def layout_placements(num_layers: int, parallel: ParallelConfig) -> list[ChunkPlacement]:
    """`chunk_placements` for a model of `num_layers` layers laid out by `parallel`."""
    return chunk_placements(
        num_layers, parallel.pipeline_model_parallel_size,
        parallel.num_layers_per_virtual_pipeline_stage,
        parallel.stage_num_layers(num_layers) if parallel.uneven_pipeline else None)


def stage_of_layer(placements: list[ChunkPlacement], layer: int) -> tuple[int, int]:
    """(stage, chunk) holding 0-based `layer`."""
    for p in placements:
        if layer in p.layers:
            return p.stage, p.chunk
    raise ValueError(f"layer {layer} is not in the model ({sum(p.num_layers for p in placements)} layers)")
