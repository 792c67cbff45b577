"""Activation memory of one transformer layer, after Korthikanti et al. 2022 (arXiv:2205.05198).

Their Table 2 counts what a GPT layer keeps for backward per micro-batch (16-bit activations,
dropout on, GeLU MLP with f = 4h, multi-head attention): 34*s*b*h + 5*a*s^2*b bytes, of which
10*s*b*h (norm inputs, the inputs of the QKV and fc1 matmuls, dropout masks) is replicated over
tensor-parallel ranks unless sequence parallelism shards it, 24*s*b*h is split over TP, and the
5*a*s^2*b attention scores are split over TP and dropped by selective recomputation. Full
recomputation keeps only each layer's input, 2*s*b*h.

The same derivation, term by term, for the layers megastack builds (Llama style):
- replicated by TP: the two norm inputs, the QKV matmul input and the fc1 matmul input
  (4 tensors of s*b*h), plus two 1-byte dropout masks when dropout is on. megastack trains
  without dropout (`to_transformer_config` sets both dropouts to 0), so no masks.
- split over TP: Q, K, V as the attention kernel saves them (megatron-core's unfused attention
  expands GQA's K and V to every head first; flash attention keeps them at num_query_groups),
  the attention output (input of the output projection), the activation-function input
  (2*f wide for SwiGLU: gate and up) and the fc2 input (f wide). megatron-core's MLP computes
  SwiGLU as silu(gate) * (up + glu_linear_offset) in separate ops when bias_activation_fusion
  is off (as megastack runs it), which also saves silu(gate) and up + offset: 2*f more.
  megastack's fused SwiGLU kernel saves only its input.
- attention scores per head, split over TP: unfused attention keeps the softmax output
  (fp32 when `attention_softmax_in_fp32`, megatron-core's default, plus the cast copy the
  next matmul saves), and with dropout its mask and output; flash attention keeps only the
  fp32 log-sum-exp per row.
Dropout on, GeLU, f = 4h, MHA, fp16 softmax reproduces 34*s*b*h + 5*a*s^2*b exactly
(tests/planning/test_activations.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from megastack.config import ModelConfig

CORE_ATTENTION_KINDS = ("unfused", "flash")
RECOMPUTE_MODULES = ("core_attn", "mlp")
DEFAULT_RECOMPUTE_MODULES = ("core_attn",)  # megatron-core's


@dataclass(frozen=True)
class LayerActivationTerms:
    """Bytes one transformer layer keeps for backward for one micro-batch, before any sharding."""

    tp_replicated: float  # tensors of the full hidden size that TP replicates (SP shards them)
    tp_sharded: float  # per-head and per-ffn-column tensors other than Q, K, V that TP splits
    mlp_intermediates: float  # the part of tp_sharded inside the MLP: what recomputing it drops
    qkv: float  # Q, K, V as the attention kernel saves them; TP splits
    qkv_recompute_inputs: float  # Q, K, V before GQA expansion: what selective recompute keeps
    core_attention: float  # attention scores (unfused) or softmax statistics (flash); TP splits
    layer_input: float  # the hidden states entering the layer: what full recomputation keeps


def layer_activation_terms(
    model: ModelConfig,
    micro_batch_size: int,
    *,
    core_attention: str = "unfused",
    activation_bytes: int = 2,
    softmax_in_fp32: bool = True,
    dropout: bool = False,
    unfused_glu: bool = True,
) -> LayerActivationTerms:
    if core_attention not in CORE_ATTENTION_KINDS:
        raise ValueError(f"core_attention must be one of {CORE_ATTENTION_KINDS}, got {core_attention!r}")
    s, b, h, f = model.seq_length, micro_batch_size, model.hidden_size, model.ffn_hidden_size
    heads, q = model.num_attention_heads, model.query_size
    kv = model.num_query_groups * model.head_dim
    a = activation_bytes
    sbh = s * b * h
    sbq = s * b * q  # the query heads' width: h unless --kv-channels says otherwise
    mask = 1 if dropout else 0

    replicated = 4 * a * sbh + 2 * mask * sbh
    qkv_unexpanded = a * s * b * (q + 2 * kv)
    if core_attention == "unfused":
        qkv = 3 * a * sbq  # K and V expanded to every head before the batched matmuls
        score_bytes = (4 + (a if a != 4 else 0)) if softmax_in_fp32 else a
        score_bytes += (1 + a) * mask
        scores = score_bytes * b * heads * s * s
    else:
        qkv = qkv_unexpanded
        scores = 4 * b * heads * s  # fp32 log-sum-exp per query row
    act_in = a * s * b * f * (2 if model.swiglu else 1)
    fc2_in = a * s * b * f
    glu_intermediates = 2 * a * s * b * f if model.swiglu and unfused_glu else 0
    mlp = act_in + fc2_in + glu_intermediates
    return LayerActivationTerms(
        tp_replicated=replicated,
        tp_sharded=a * sbq + mlp,
        mlp_intermediates=mlp,
        qkv=qkv,
        qkv_recompute_inputs=qkv_unexpanded,
        core_attention=scores,
        layer_input=a * sbh,
    )


def layer_activation_bytes(
    terms: LayerActivationTerms,
    tensor_parallel_size: int,
    sequence_parallel: bool,
    recompute_granularity: Optional[str],
    recompute_modules: Sequence[str] = DEFAULT_RECOMPUTE_MODULES,
) -> float:
    """Bytes one layer keeps per micro-batch on one TP rank. `recompute_modules` are the
    selective recomputation's (--recompute-modules: core_attn, mlp)."""
    t = tensor_parallel_size
    seq_shards = t if sequence_parallel else 1
    if recompute_granularity == "full":
        return terms.layer_input / seq_shards
    assert set(recompute_modules) <= set(RECOMPUTE_MODULES), recompute_modules
    selective = recompute_granularity == "selective"
    if selective and "core_attn" in recompute_modules:
        # The checkpointed core attention keeps only its inputs; scores are rebuilt in backward.
        attention = terms.qkv_recompute_inputs / t
    else:
        attention = (terms.qkv + terms.core_attention) / t
    sharded = terms.tp_sharded
    if selective and "mlp" in recompute_modules:
        # The checkpointed MLP keeps its input, counted with the replicated tensors.
        sharded -= terms.mlp_intermediates
    return terms.tp_replicated / seq_shards + sharded / t + attention
