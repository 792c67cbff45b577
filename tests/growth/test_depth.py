import pytest
import torch
from hypothesis import given, settings, strategies as st

from megastack.growth.depth import DepthGrowth, repeated_positions, source_layer_map
from megastack.growth.plans import StackingPlan, gstack_plan, interleave_plan, parse_stacking_list

from .conftest import SMALL

PROJ = "decoder.layers.self_attention.linear_proj.weight"
FC2 = "decoder.layers.mlp.linear_fc2.weight"
QKV = "decoder.layers.self_attention.linear_qkv.weight"


def layer_tensor(layers=3, *rest):
    return torch.randn(layers, *(rest or (4, 5)), generator=torch.Generator().manual_seed(layers))


@given(st.lists(st.integers(0, 3), min_size=1, max_size=12))
@settings(max_examples=60, deadline=None)
def test_stack_is_index_select(layers):
    src = layer_tensor(4)
    out = DepthGrowth(StackingPlan(tuple(layers)), "stack").transform(QKV, src)
    assert torch.equal(out, src.index_select(0, torch.tensor(layers)))


def test_non_layer_keys_pass_through():
    emb = torch.randn(7, 4)
    assert DepthGrowth(gstack_plan(2, 2), "zero").transform("embedding.word_embeddings.weight", emb) is emb


def test_zero_zeroes_output_projections_of_repeats_only():
    plan = parse_stacking_list("0,0,1,1,2,0")
    with pytest.raises(ValueError, match="first occurrences"):
        DepthGrowth(plan, "zero", source_num_layers=4)  # layer 3 never appears
    grow = DepthGrowth(plan, "zero", source_num_layers=3)
    src = layer_tensor(3)
    assert repeated_positions(plan) == [1, 3, 5]
    for key in (PROJ, FC2, "decoder.layers.mlp.linear_fc2.bias"):
        out = grow.transform(key, src)
        assert torch.equal(out[[0, 2, 4]], src[[0, 1, 2]])
        assert not out[[1, 3, 5]].any()
    assert torch.equal(grow.transform(QKV, src), src[list(plan.layers)])


def test_zero_rejects_out_of_order_first_occurrences():
    with pytest.raises(ValueError, match=r"first occurrences are \[1, 0\]"):
        DepthGrowth(StackingPlan((1, 0, 1, 0)), "zero").transform(PROJ, layer_tensor(2))


def test_random_redraws_repeats_like_a_fresh_target_model(build):
    from megastack.growth.state import model_global_state

    target = SMALL.replace(num_layers=4)
    plan = interleave_plan(2, 2)
    source_state = model_global_state([build(SMALL, seed=1)])
    fresh_state = model_global_state([build(target, seed=9)])
    grow = DepthGrowth(plan, "random", target, seed=9)
    for key, src in source_state.items():
        out = grow.transform(key, src)
        if not key.startswith("decoder.layers."):
            assert out is src
            continue
        assert torch.equal(out[[0, 2]], src), key  # first occurrences copied
        assert torch.equal(out[[1, 3]], fresh_state[key][[1, 3]]), key  # repeats as a fresh model


def test_shrink_keeps_listed_layers_and_rejects_growth():
    src = layer_tensor(6)
    assert torch.equal(DepthGrowth(StackingPlan((0, 1)), "shrink").transform(QKV, src), src[:2])
    assert torch.equal(DepthGrowth(StackingPlan((0, 3, 5)), "shrink").transform(QKV, src), src[[0, 3, 5]])
    with pytest.raises(ValueError, match="repeats layers"):
        DepthGrowth(StackingPlan((0, 0)), "shrink").transform(QKV, src)
    with pytest.raises(ValueError, match="fewer than the source's 6 layers"):
        DepthGrowth(StackingPlan(tuple(range(6))), "shrink").transform(QKV, src)


def test_bad_inputs():
    with pytest.raises(ValueError, match="one of"):
        DepthGrowth(gstack_plan(2, 2), "copy")
    with pytest.raises(ValueError, match="needs the target ModelConfig"):
        DepthGrowth(gstack_plan(2, 2), "random")
    with pytest.raises(ValueError, match="4 entries but the target model has 2 layers"):
        DepthGrowth(gstack_plan(2, 2), "stack", SMALL)
    grow = DepthGrowth(gstack_plan(3, 2), "stack")
    with pytest.raises(ValueError, match=r"source layer\(s\) \[2\]"):
        grow.transform(QKV, layer_tensor(2))
    grow = DepthGrowth(gstack_plan(2, 2), "stack", source_num_layers=2)
    with pytest.raises(ValueError, match="expected 2 source layers"):
        grow.transform(QKV, layer_tensor(3))


def test_optimizer_state_follows_the_weights():
    moments = layer_tensor(2).abs()
    plan = gstack_plan(2, 2)
    stacked = DepthGrowth(plan, "stack").transform_optimizer_state(PROJ, moments)
    assert torch.equal(stacked, moments[[0, 1, 0, 1]])
    zeroed = DepthGrowth(plan, "zero").transform_optimizer_state(PROJ, moments)
    assert torch.equal(zeroed[:2], moments) and not zeroed[2:].any()
    kept = DepthGrowth(plan, "zero").transform_optimizer_state(QKV, moments)
    assert torch.equal(kept, moments[[0, 1, 0, 1]])


def test_source_layer_map():
    assert source_layer_map(parse_stacking_list("0-1*2")) == [(0, 0), (1, 1), (2, 0), (3, 1)]
