"""Which transformer layers each pipeline stage (and virtual chunk) holds.

megatron-core (`get_transformer_layer_offset`, no custom layout) fills the model chunks round by
round: chunk 0 of stage 0, chunk 0 of stage 1, ..., chunk 0 of the last stage, then chunk 1 of
stage 0, and so on, each holding the next run of layers. With an even split every chunk holds
`Lv = L / (PP * V)` layers, so chunk `c` of stage `p` starts at `(c * PP + p) * Lv`; without
interleaving V = 1 and stage `p` holds `[p * L/PP, (p+1) * L/PP)`. Uneven stages
(ParallelConfig.chunk_num_layers) only change the run lengths. The word embedding lives in chunk
0 of stage 0; the final norm and output layer in the last chunk of the last stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

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


def placements_of_chunks(chunk_layers: Sequence[Sequence[int]]) -> list[ChunkPlacement]:
    """The placements of chunks holding `chunk_layers[stage][chunk]` layers each, ordered by
    stage then chunk."""
    pp, chunks = len(chunk_layers), len(chunk_layers[0])
    assert all(len(sizes) == chunks for sizes in chunk_layers), chunk_layers
    placements, first_layer = [], 0
    for chunk in range(chunks):  # megatron-core's order: round by round over the stages
        for stage in range(pp):
            placements.append(ChunkPlacement(
                stage=stage, chunk=chunk, first_layer=first_layer,
                num_layers=chunk_layers[stage][chunk],
                has_embedding=stage == 0 and chunk == 0,
                has_output_layer=stage == pp - 1 and chunk == chunks - 1))
            first_layer += chunk_layers[stage][chunk]
    return sorted(placements, key=lambda p: (p.stage, p.chunk))


def layout_placements(num_layers: int, parallel: ParallelConfig) -> list[ChunkPlacement]:
    """The placements of a model of `num_layers` layers laid out by `parallel`."""
    return placements_of_chunks(parallel.chunk_num_layers(num_layers))


def stage_of_layer(placements: list[ChunkPlacement], layer: int) -> tuple[int, int]:
    """(stage, chunk) holding 0-based `layer`."""
    for p in placements:
        if layer in p.layers:
            return p.stage, p.chunk
    raise ValueError(f"layer {layer} is not in the model ({sum(p.num_layers for p in placements)} layers)")
