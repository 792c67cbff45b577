"""MSG-style masks on width growth with G_random, in a real megatron-core GPTModel: at 0 the
grown model computes the source's logits, in between something else, at 1 the unmasked model."""

import pytest
import torch

from megastack.growth.depth import DepthGrowth, repeated_positions
from megastack.growth.mask import GrowthMask, WidthMaskUnits
from megastack.growth.plans import parse_stacking_list
from megastack.growth.width import WidthGrowth, widths

from .conftest import MHA, QK_NORM, QKV_BIAS, SMALL, WIDE_HEADS, logits

WIDE = dict(hidden_size=64, num_attention_heads=8, num_query_groups=4, ffn_hidden_size=80)


@pytest.mark.parametrize("src_cfg, changes", [
    (SMALL, WIDE),
    (MHA, dict(hidden_size=64, num_attention_heads=8, num_query_groups=8, ffn_hidden_size=96)),
    (SMALL, dict(hidden_size=96, num_attention_heads=12, num_query_groups=2, ffn_hidden_size=48)),
    (SMALL, dict(ffn_hidden_size=77)),
    (QKV_BIAS, WIDE),
    (QK_NORM, WIDE),
    (WIDE_HEADS, WIDE),
    # 4 heads of 16 on hidden 32, then on hidden 64: the target's head width is the default.
    (WIDE_HEADS, dict(hidden_size=64, ffn_hidden_size=80)),
    (SMALL.replace(normalization="LayerNorm"), dict(ffn_hidden_size=64)),
], ids=["gqa-2x", "mha-2x", "bigger-groups-ffn-kept", "ffn-only", "qkv-bias", "qk-norm",
        "wide-heads", "wide-heads-become-default", "layernorm-ffn"])
def test_masked_random_width_growth_starts_as_the_source(build, source, src_cfg, changes):
    state, expected = source(src_cfg)
    target = src_cfg.replace(**changes)
    grow = WidthGrowth(src_cfg, target, "random", seed=3)
    model = build(target, seed=7, state={k: grow.transform(k, v) for k, v in state.items()})
    unmasked = logits(model, target)
    assert (unmasked - expected).abs().max() > 1e-3  # G_random alone changes the function

    mask = GrowthMask([model], layers=[], ramp_iters=2,
                      width=WidthMaskUnits.from_widths(target, widths(src_cfg)))
    mask.update(0)
    assert (logits(model, target) - expected).abs().max() < 1e-5
    mask.update(1)
    half = logits(model, target)
    assert (half - expected).abs().max() > 1e-4 and (half - unmasked).abs().max() > 1e-4
    mask.update(2)
    assert not mask.active
    assert torch.equal(logits(model, target), unmasked)


def test_masked_random_depth_and_width_growth_starts_as_the_source(build, source):
    """--operator random --width-operator random: the new layers and the new units together."""
    state, expected = source(SMALL)
    plan = parse_stacking_list("0,1,0,1")
    deep = SMALL.replace(num_layers=4)
    target = deep.replace(**WIDE)
    depth = DepthGrowth(plan, "random", deep, seed=3)
    width = WidthGrowth(deep, target, "random", seed=3)
    model = build(target, seed=7,
                  state={k: width.transform(k, depth.transform(k, v)) for k, v in state.items()})
    mask = GrowthMask([model], layers=repeated_positions(plan), ramp_iters=4,
                      width=WidthMaskUnits.from_widths(target, widths(SMALL)))
    mask.update(0)
    assert (logits(model, target) - expected).abs().max() < 1e-5


def test_hidden_growth_masks_need_rmsnorm():
    layernorm = SMALL.replace(normalization="LayerNorm")
    with pytest.raises(ValueError, match="widened from hidden size 32 to 64 with LayerNorm.*"
                                         "needs RMSNorm"):
        WidthMaskUnits.from_widths(layernorm.replace(**WIDE), widths(layernorm))


@pytest.mark.gpu
def test_masked_width_growth_with_transformer_engine_layers(megatron_world):
    """With Transformer Engine the layer norms are fused into linear_qkv and linear_fc1 (the QKV
    bias added inside): the norm's factor goes on their matmul outputs."""
    pytest.importorskip("transformer_engine")
    from megatron.core.transformer.identity_op import IdentityOp

    from megastack.config import ParallelConfig
    from megastack.growth.state import load_global_state, model_global_state
    from megastack.model import build_model_chunks

    def te_model(cfg, state=None):
        model = build_model_chunks(cfg, ParallelConfig(), seed=1,
                                   transformer_impl="transformer_engine")[0]
        if state is not None:
            load_global_state([model], state)
        return model.eval()

    def te_logits(model, cfg):
        gen = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, cfg.vocab_size, (2, cfg.seq_length), generator=gen).cuda()
        positions = torch.arange(cfg.seq_length, device="cuda").unsqueeze(0).expand(2, -1)
        with torch.no_grad():
            return model(tokens, positions, None).float()

    target = QKV_BIAS.replace(**WIDE)
    state = model_global_state([te_model(QKV_BIAS)])
    gen = torch.Generator().manual_seed(1)
    for key in state:
        if "norm" in key or key.endswith("bias"):
            state[key] = state[key] + 0.2 * torch.randn(state[key].shape, generator=gen)
    expected = te_logits(te_model(QKV_BIAS, state), QKV_BIAS)
    grow = WidthGrowth(QKV_BIAS, target, "random", seed=3)
    model = te_model(target, {k: grow.transform(k, v) for k, v in state.items()})
    assert isinstance(model.decoder.layers[0].input_layernorm, IdentityOp)  # the fused path
    unmasked = (te_logits(model, target) - expected).abs().max()
    mask = GrowthMask([model], layers=[], ramp_iters=2,
                      width=WidthMaskUnits.from_widths(target, widths(QKV_BIAS)))
    mask.update(0)
    assert (te_logits(model, target) - expected).abs().max() < 0.01 * unmasked
