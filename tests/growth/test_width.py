import pytest
import torch

from megastack.growth.width import AxisMap, WidthGrowth, expansion_map, key_rule, validate_width_growth

from .conftest import SMALL

WIDE_GQA = SMALL.replace(hidden_size=64, num_attention_heads=8, num_query_groups=4, ffn_hidden_size=80)


def test_expansion_map_balances_copies():
    amap = AxisMap(expansion_map(5, 13, torch.Generator().manual_seed(0)), 5)
    assert torch.equal(amap.src[:5], torch.arange(5))
    counts = torch.bincount(amap.src, minlength=5)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 13
    read = amap.selection_matrix("read")
    assert torch.allclose(read.sum(0), torch.ones(5))  # copies of a unit sum back to the unit


def test_direct_qkv_respects_query_group_interleave():
    grow = WidthGrowth(SMALL, WIDE_GQA, "direct", seed=0)
    d, r = SMALL.head_dim, 2  # heads per group, unchanged here
    src = torch.randn(SMALL.num_layers, (SMALL.num_attention_heads + 2 * SMALL.num_query_groups) * d, 32)
    out = grow.transform("decoder.layers.self_attention.linear_qkv.weight", src)
    group_map = grow.maps["qkv"].src.view(WIDE_GQA.num_query_groups, (r + 2) * d)
    hidden = grow.maps["hidden"].src
    for g in range(WIDE_GQA.num_query_groups):
        block = out[:, g * (r + 2) * d:(g + 1) * (r + 2) * d]
        src_group = int(group_map[g, 0]) // ((r + 2) * d)
        expected = src[:, src_group * (r + 2) * d:(src_group + 1) * (r + 2) * d][:, :, hidden] / 2
        assert torch.equal(block, expected)  # q heads, k and v of one source group, in order


def test_direct_swiglu_moves_gate_and_up_together():
    grow = WidthGrowth(SMALL, SMALL.replace(ffn_hidden_size=70), "direct", seed=0)
    f = SMALL.ffn_hidden_size
    src = torch.arange(2 * 2 * f * 32, dtype=torch.float32).view(2, 2 * f, 32)
    out = grow.transform("decoder.layers.mlp.linear_fc1.weight", src)
    neurons = grow.maps["ffn"].src
    assert torch.equal(out[:, :70], src[:, neurons])
    assert torch.equal(out[:, 70:], src[:, f + neurons])


def test_zero_gives_new_units_zero_outgoing_and_random_incoming():
    dst = SMALL.replace(ffn_hidden_size=60)
    grow = WidthGrowth(SMALL, dst, "zero", seed=0)
    fc1 = torch.randn(2, 96, 32)
    fc2 = torch.randn(2, 32, 48)
    out1 = grow.transform("decoder.layers.mlp.linear_fc1.weight", fc1)
    out2 = grow.transform("decoder.layers.mlp.linear_fc2.weight", fc2)
    assert torch.equal(out1[:, :48], fc1[:, :48]) and torch.equal(out1[:, 60:108], fc1[:, 48:])
    assert out1[:, 48:60].abs().min() > 0 and out1[:, 108:].abs().min() > 0
    assert torch.equal(out2[:, :, :48], fc2) and not out2[:, :, 48:].any()


def test_random_copies_existing_units_in_place():
    grow = WidthGrowth(SMALL, WIDE_GQA, "random", seed=0)
    emb = torch.randn(128, 32)
    out = grow.transform("embedding.word_embeddings.weight", emb)
    assert out.shape == (128, 64) and torch.equal(out[:, :32], emb) and out[:, 32:].abs().min() > 0


def test_same_seed_same_mapping_for_every_key():
    a = WidthGrowth(SMALL, WIDE_GQA, "direct", seed=3)
    b = WidthGrowth(SMALL, WIDE_GQA, "direct", seed=3)
    c = WidthGrowth(SMALL, WIDE_GQA, "direct", seed=4)
    assert all(torch.equal(a.maps[r].src, b.maps[r].src) for r in a.maps)
    assert not torch.equal(a.maps["ffn"].src, c.maps["ffn"].src)


@pytest.mark.parametrize("changes, match", [
    (dict(hidden_size=48, num_attention_heads=6, num_query_groups=3, ffn_hidden_size=48), "multiple of 32"),
    (dict(hidden_size=64, num_attention_heads=4, num_query_groups=2),
     r"head_dim.*set --target-num-attention-heads \d+"),
    (dict(hidden_size=60, num_attention_heads=4, num_query_groups=2), "head_dim"),
    (dict(ffn_hidden_size=40), "cannot shrink ffn_hidden_size"),
    (dict(hidden_size=64, num_attention_heads=8, num_query_groups=8),
     r"query heads per group.*use --target-num-query-groups \d+"),
    (dict(vocab_size=256), "vocab_size"),
    (dict(num_query_groups=1), "cannot shrink num_query_groups"),
    # A narrower hidden size is a shrink, not a head_dim mismatch whose advice would fail next.
    (dict(hidden_size=16), "cannot shrink hidden_size"),
])
def test_invalid_targets_rejected(changes, match):
    with pytest.raises(ValueError, match=match):
        validate_width_growth(SMALL, SMALL.replace(**changes), "direct")


def test_bad_operator_key_and_shape():
    with pytest.raises(ValueError, match="one of"):
        WidthGrowth(SMALL, WIDE_GQA, "split")
    grow = WidthGrowth(SMALL, WIDE_GQA, "direct")
    with pytest.raises(ValueError, match="no width-growth rule"):
        key_rule("decoder.layers.mlp.router.weight")
    with pytest.raises(ValueError, match="dim 2 has size 16"):
        grow.transform("decoder.layers.self_attention.linear_qkv.weight", torch.zeros(2, 64, 16))
    with pytest.raises(ValueError, match="expected 2 dims"):
        grow.transform("output_layer.weight", torch.zeros(2, 128, 32))


@pytest.mark.parametrize("operator", ["direct", "zero", "random"])
def test_target_shape_matches_transform(operator):
    grow = WidthGrowth(SMALL, WIDE_GQA, operator, seed=0)
    for key, shape in [("embedding.word_embeddings.weight", (128, 32)),
                       ("decoder.layers.self_attention.linear_qkv.weight", (2, 64, 32)),
                       ("decoder.layers.self_attention.linear_proj.weight", (2, 32, 32)),
                       ("decoder.layers.mlp.linear_fc1.weight", (2, 96, 32)),
                       ("decoder.layers.mlp.linear_fc2.weight", (2, 32, 48)),
                       ("decoder.layers.mlp.linear_fc1.layer_norm_weight", (2, 32)),
                       ("output_layer.weight", (128, 32))]:
        assert grow.transform(key, torch.randn(shape)).shape == grow.target_shape(key, shape), key
