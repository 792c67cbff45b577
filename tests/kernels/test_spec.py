"""The fused spec is a drop-in for the local spec: the same checkpoint keys and shapes, and on
CPU (reference path) the same forward outputs. Models are built in this process on a gloo world
of size 1 with megatron-core's parallel state initialised."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from megastack.config import ModelConfig, to_transformer_config




MODEL = ModelConfig.from_name("tiny-2l")  # RMSNorm, SwiGLU, RoPE, GQA, untied


def _config(**extra):
    return to_transformer_config(MODEL, use_cpu_initialization=True, **extra)


def _build(spec, config):
    from megatron.core.models.gpt import GPTModel

    torch.manual_seed(0)
    return GPTModel(
        config,
        spec,
        vocab_size=MODEL.vocab_size,
        max_sequence_length=MODEL.max_position_embeddings,
        position_embedding_type=MODEL.position_embedding_type,
        share_embeddings_and_output_weights=False,
    )


def _local(qk_layernorm=False):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    return get_gpt_layer_local_spec(normalization="RMSNorm", qk_layernorm=qk_layernorm)


def _key_shapes(model):
    """state-dict key -> (checkpoint key, kind, global shape) of every sharded entry."""
    out = {}
    for key, value in model.sharded_state_dict().items():
        shape = getattr(value, "global_shape", None)
        if shape is None and hasattr(value, "data"):  # ShardedTensorFactory (fc1's [gate; up])
            shape = tuple(value.data.shape)
        out[key] = (value.key, type(value).__name__, tuple(shape) if shape is not None else None)
    return out


@pytest.mark.parametrize("qk_layernorm", [False, True])
def test_fused_spec_checkpoint_keys_equal_local_spec(megatron_world, qk_layernorm):
    from megastack.kernels.modules import FusedRMSNorm, FusedRoPESelfAttention, FusedSwiGLUMLP
    from megastack.kernels.spec import get_gpt_layer_fused_spec

    config = to_transformer_config(MODEL.replace(qk_layernorm=qk_layernorm),
                                   use_cpu_initialization=True)
    local = _build(_local(qk_layernorm), config)
    fused = _build(get_gpt_layer_fused_spec(qk_layernorm=qk_layernorm), config)
    layer = fused.decoder.layers[0]
    assert isinstance(layer.input_layernorm, FusedRMSNorm)
    assert isinstance(layer.self_attention, FusedRoPESelfAttention)
    assert isinstance(layer.mlp, FusedSwiGLUMLP)
    if qk_layernorm:
        assert isinstance(layer.self_attention.q_layernorm, FusedRMSNorm)

    assert _key_shapes(fused) == _key_shapes(local)
    # The norms are saved under the TE-style names the local spec maps them to.
    keys = {v.key for v in fused.sharded_state_dict().values()}
    assert "decoder.layers.self_attention.linear_qkv.layer_norm_weight" in keys
    assert "decoder.layers.mlp.linear_fc1.layer_norm_weight" in keys
    assert {k: getattr(v, "shape", None) for k, v in fused.state_dict().items()} == {
        k: getattr(v, "shape", None) for k, v in local.state_dict().items()
    }


def test_fused_block_spec_keys_equal_local_spec(megatron_world):
    from megastack.kernels.modules import FusedRMSNorm
    from megastack.kernels.spec import get_gpt_block_fused_spec

    config = _config()
    local = _build(_local(), config)
    fused = _build(get_gpt_block_fused_spec(config), config)
    assert isinstance(fused.decoder.final_layernorm, FusedRMSNorm)
    assert len(fused.decoder.layers) == MODEL.num_layers
    assert _key_shapes(fused) == _key_shapes(local)


def test_fused_spec_forward_and_grads_match_local_on_cpu(megatron_world, monkeypatch):
    from megastack.kernels import modules
    from megastack.kernels.spec import get_gpt_layer_fused_spec

    calls = []
    real_rope = modules.rope
    monkeypatch.setattr(modules, "rope", lambda *a, **k: calls.append(1) or real_rope(*a, **k))

    config = _config()
    local = _build(_local(), config)
    fused = _build(get_gpt_layer_fused_spec(), config)
    fused.load_state_dict(local.state_dict())
    tokens = torch.randint(0, MODEL.vocab_size, (2, 16))
    positions = torch.arange(16).unsqueeze(0).expand(2, -1)
    labels = torch.randint(0, MODEL.vocab_size, (2, 16))

    out_local = local(tokens, positions, None, labels=labels)
    out_fused = fused(tokens, positions, None, labels=labels)
    torch.testing.assert_close(out_fused, out_local, rtol=1e-5, atol=1e-5)
    assert len(calls) == 2 * MODEL.num_layers  # RoPE went through our op for q and k
    out_local.mean().backward()
    out_fused.mean().backward()
    grads_local = dict(local.named_parameters())
    for name, p in fused.named_parameters():
        torch.testing.assert_close(p.grad, grads_local[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_fused_rmsnorm_matches_torch_norm_state_dict(megatron_world):
    from megastack.kernels.modules import FusedRMSNorm

    config = _config()
    ours = FusedRMSNorm(config, hidden_size=64, eps=1e-5)
    stock = torch.nn.RMSNorm(64, eps=1e-5)
    assert {k: (v.shape, v.dtype) for k, v in ours.state_dict().items()} == {
        k: (v.shape, v.dtype) for k, v in stock.state_dict().items()
    }
    ours.load_state_dict({"weight": torch.rand(64)})
    stock.load_state_dict(ours.state_dict())
    x = torch.randn(3, 2, 64)
    torch.testing.assert_close(ours(x), stock(x))


def test_fused_modules_reject_unsupported_configs(megatron_world):
    from megastack.kernels.modules import FusedRMSNorm, FusedSwiGLUMLP
    from megatron.core.transformer.mlp import MLPSubmodules

    with pytest.raises(ValueError, match="RMSNorm"):
        FusedRMSNorm(dataclasses.replace(_config(), normalization="LayerNorm"), 64)
    gelu = to_transformer_config(MODEL.replace(swiglu=False), use_cpu_initialization=True)
    assert gelu.activation_func is F.gelu
    with pytest.raises(ValueError, match="gated_linear_unit"):
        FusedSwiGLUMLP(gelu, MLPSubmodules(), ffn_hidden_size=MODEL.ffn_hidden_size)
