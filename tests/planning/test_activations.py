"""Activation terms against Korthikanti et al. 2022, Table 2, and a hand count for megastack's layers."""

import pytest

from megastack.config import ModelConfig
from megastack.planning import layer_activation_bytes, layer_activation_terms

S, B, H, HEADS = 2048, 2, 1024, 16


def gpt3_style_terms():
    """The paper's layer: GeLU MLP with f = 4h, multi-head attention, dropout, fp16 softmax."""
    model = ModelConfig(num_layers=1, hidden_size=H, num_attention_heads=HEADS, ffn_hidden_size=4 * H,
                        swiglu=False, seq_length=S)
    return layer_activation_terms(model, B, activation_bytes=2, softmax_in_fp32=False, dropout=True)


SBH, AS2B = S * B * H, HEADS * S * S * B


@pytest.mark.parametrize("t,sp,recompute,expected", [
    (1, False, None, 34 * SBH + 5 * AS2B),                       # no parallelism
    (4, False, None, SBH * (10 + 24 / 4) + 5 * AS2B / 4),        # tensor parallel
    (4, True, None, (34 * SBH + 5 * AS2B) / 4),                  # + sequence parallel
    (4, False, "selective", SBH * (10 + 24 / 4)),                # TP + selective recompute
    (4, True, "selective", 34 * SBH / 4),                        # TP + SP + selective
    (1, False, "full", 2 * SBH),                                 # full recompute
    (4, True, "full", 2 * SBH / 4),
])
def test_korthikanti_table_2(t, sp, recompute, expected):
    assert layer_activation_bytes(gpt3_style_terms(), t, sp, recompute) == pytest.approx(expected)


def test_megastack_layer_by_hand():
    # tiny-2l: h 64, 4 heads, 2 query groups (kv 32), f 176, s 64; bf16, no dropout.
    model = ModelConfig.from_name("tiny-2l")
    sbh = 64 * 64
    unfused = layer_activation_terms(model, 1, core_attention="unfused", activation_bytes=2)
    assert unfused.tp_replicated == 4 * 2 * sbh                  # 2 norm inputs, qkv and fc1 inputs
    assert unfused.qkv == 3 * 2 * sbh                            # K, V expanded to every head
    assert unfused.qkv_recompute_inputs == 2 * 64 * (64 + 2 * 32)
    # proj in, SwiGLU in, fc2 in, and megatron-core's unfused SwiGLU's silu(gate) and up + offset
    assert unfused.tp_sharded == 2 * sbh + 2 * 64 * 2 * 176 + 2 * 64 * 176 + 2 * 2 * 64 * 176
    fused_glu = layer_activation_terms(model, 1, activation_bytes=2, unfused_glu=False)
    assert fused_glu.tp_sharded == 2 * sbh + 2 * 64 * 2 * 176 + 2 * 64 * 176
    assert unfused.core_attention == (4 + 2) * 4 * 64 * 64       # fp32 softmax + its bf16 copy
    flash = layer_activation_terms(model, 1, core_attention="flash", activation_bytes=2)
    assert flash.qkv == 2 * 64 * (64 + 2 * 32)
    assert flash.core_attention == 4 * 4 * 64                    # fp32 log-sum-exp per row
    assert layer_activation_bytes(unfused, 1, False, None) == (
        unfused.tp_replicated + unfused.tp_sharded + unfused.qkv + unfused.core_attention)
    assert layer_activation_bytes(unfused, 2, True, "selective") == (
        unfused.tp_replicated + unfused.tp_sharded + unfused.qkv_recompute_inputs) / 2


def test_unknown_attention_kind_is_rejected():
    with pytest.raises(ValueError, match="core_attention"):
        layer_activation_terms(ModelConfig.from_name("tiny-2l"), 1, core_attention="sdpa")
