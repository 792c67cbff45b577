"""Layer -> pipeline stage (chunk) maps as megatron-core assigns layers.

The same placement is checked against megatron-core's own layer numbering on real ranks in
tests/growth/test_grow_checkpoint.py (TP1 PP4, TP2 PP1, PP2 with virtual stages).
"""

import pytest

from megastack.checkpoint.layer_map import format_layer_map, growth_layer_map, layer_stage_map
from megastack.config import ParallelConfig


def pp(size, vp_layers=None, **split):
    return ParallelConfig(pipeline_model_parallel_size=size,
                          num_layers_per_virtual_pipeline_stage=vp_layers, **split)


def test_without_interleaving_each_stage_holds_a_contiguous_block():
    assert layer_stage_map(8, pp(4)) == [(0, 0), (0, 0), (1, 0), (1, 0), (2, 0), (2, 0), (3, 0), (3, 0)]


def test_virtual_chunks_follow_megatron_interleaving():
    # chunk c of stage p holds layers [(c*PP + p)*Lv, (c*PP + p + 1)*Lv): PP2, Lv=2, 8 layers
    assert layer_stage_map(8, pp(2, 2)) == [(0, 0), (0, 0), (1, 0), (1, 0), (0, 1), (0, 1), (1, 1), (1, 1)]
    assert layer_stage_map(8, pp(2, 1)) == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2), (0, 3), (1, 3)]


def test_uneven_stages_hold_consecutive_runs_chunk_by_chunk():
    assert layer_stage_map(6, pp(2, decoder_first_pipeline_num_layers=2)) == [
        (0, 0), (0, 0), (1, 0), (1, 0), (1, 0), (1, 0)]
    # 2 chunks per stage: 4 + 8 layers -> chunks of 2 (stage 0) and 4 (stage 1), round by round
    interleaved = pp(2, decoder_first_pipeline_num_layers=4, num_virtual_stages_per_pipeline_rank=2)
    assert layer_stage_map(12, interleaved) == [(0, 0)] * 2 + [(1, 0)] * 4 + [(0, 1)] * 2 + [(1, 1)] * 4
    # 7 layers + the embedding = 2 stages x 2 chunks x 2: stage 0's first chunk holds one layer
    embedding = pp(2, account_for_embedding_in_pipeline_split=True,
                   num_virtual_stages_per_pipeline_rank=2)
    assert layer_stage_map(7, embedding) == [(0, 0), (1, 0), (1, 0), (0, 1), (0, 1), (1, 1), (1, 1)]


def test_growth_map_rows_name_source_and_stage():
    rows = growth_layer_map([0, 1, 0, 1, 0, 1], pp(3))
    assert [(r.target_layer, r.source_layer, r.stage) for r in rows] == [
        (0, 0, 0), (1, 1, 0), (2, 0, 1), (3, 1, 1), (4, 0, 2), (5, 1, 2)]


def test_format_shows_chunks_only_when_interleaved():
    plain = format_layer_map(growth_layer_map([0, 1], pp(2)))
    assert plain.splitlines()[0].split() == ["target", "layer", "->", "source", "layer", "->", "stage"]
    assert plain.splitlines()[2].split() == ["1", "->", "1", "->", "1"]
    chunked = format_layer_map(growth_layer_map([0, 0, 1, 1], pp(2, 1)), interleaved=True)
    assert "stage (chunk)" in chunked
    assert chunked.splitlines()[3].split() == ["2", "->", "1", "->", "0", "(1)"]


def test_a_layout_that_does_not_divide_the_layers_is_refused():
    with pytest.raises(ValueError, match="does not place layers"):
        layer_stage_map(6, pp(4))
