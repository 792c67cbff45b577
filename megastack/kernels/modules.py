"""Drop-in replacements for megatron-core's local-spec modules that route through the kernels.

Each keeps the parameters, buffers and state-dict keys of the module it replaces, so
checkpoints move freely between the local spec and the fused spec.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer.attention import (
    SelfAttention,
    _yarn_get_concentration_factor_from_config,
)
from megatron.core.transformer.mlp import MLP
from megatron.core.transformer.transformer_config import TransformerConfig

from megastack.kernels.functions import rms_norm, rope, swiglu

logger = logging.getLogger(__name__)


class FusedRMSNorm(torch.nn.Module):
    """RMSNorm through the fused kernel; replaces the local spec's `WrappedTorchNorm`.

    The local spec builds `torch.nn.RMSNorm(hidden_size, eps)`: one float32 parameter `weight`
    of shape [hidden_size] initialised to ones, no buffers. This module has exactly that, so its
    state dict and megatron-core's sharded_state_dict keys are the same. Unlike the torch norm
    it also supports sequence parallelism (the weight is marked so its gradient is all-reduced
    across the tensor-parallel group).

    `forward(x, residual=None)`: with a residual it returns (norm(x + residual), x + residual),
    fusing the add into the norm.
    """

    def __init__(
        self,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-5,
        persist_layer_norm: bool = False,  # accepted for spec compatibility; no effect here
        zero_centered_gamma: bool = False,
        normalization: str = "RMSNorm",
    ):
        super().__init__()
        if config.normalization != "RMSNorm":
            raise ValueError(
                f"the fused spec implements RMSNorm only, but the config asks for "
                f"normalization={config.normalization!r}: use the local or TE spec"
            )
        if config.layernorm_zero_centered_gamma or zero_centered_gamma:
            raise ValueError("FusedRMSNorm does not implement zero-centred gamma")
        self.hidden_size = hidden_size
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size))
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None):
        return rms_norm(x, self.weight, self.eps, residual)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.eps}"


class FusedSwiGLUMLP(MLP):
    """megatron-core's MLP with the gated activation done by the fused SwiGLU kernel.

    Parameters, sharding and checkpoint keys are MLP's own (it is a subclass). Only the
    activation between linear_fc1 and linear_fc2 changes: `silu(gate) * up` on fc1's
    `[gate; up]` output. Expert calls with `per_token_scale` keep MLP's own path.
    """

    def __init__(self, config: TransformerConfig, submodules, **kwargs):
        if not config.gated_linear_unit or config.activation_func is not F.silu:
            raise ValueError(
                "FusedSwiGLUMLP needs gated_linear_unit=True and activation_func=F.silu "
                "(--swiglu); use megatron-core's MLP for other activations"
            )
        if config.activation_func_clamp_value is not None or config.glu_linear_offset != 0.0:
            raise ValueError(
                "FusedSwiGLUMLP does not implement activation_func_clamp_value or "
                "glu_linear_offset"
            )
        super().__init__(config, submodules, **kwargs)

    def forward(self, hidden_states, per_token_scale=None, **kwargs):
        if per_token_scale is not None or self.config.use_te_activation_func:
            return super().forward(hidden_states, per_token_scale=per_token_scale, **kwargs)
        intermediate, bias = self.linear_fc1(hidden_states)
        if bias is not None:
            intermediate = intermediate + bias
        output, output_bias = self.linear_fc2(swiglu(intermediate))
        return output, output_bias


class FusedRoPESelfAttention(SelfAttention):
    """megatron-core's SelfAttention with rotary embedding applied by the fused RoPE kernel.

    SelfAttention applies RoPE right after `get_query_key_value_tensors`; this subclass applies
    it at the end of that method instead and hands the parent no rotary embedding, so the rest
    of the forward is unchanged. Cases the kernel does not cover (packed sequences, inference,
    interleaved or MLA rotary, megatron's own fused RoPE) keep the parent's path.
    """

    _pending_rotary = None  # (q_freqs, k_freqs, mscale) between forward and the qkv split

    def _rope_here(self, inference_context, packed_seq_params) -> bool:
        c = self.config
        return (
            inference_context is None
            and packed_seq_params is None
            and not c.rotary_interleaved
            and not c.multi_latent_attention
            and not c.apply_rope_fusion
            and not c.fused_single_qkv_rope
        )

    def forward(
        self,
        hidden_states,
        attention_mask,
        key_value_states=None,
        inference_context=None,
        rotary_pos_emb=None,
        rotary_pos_cos=None,
        rotary_pos_sin=None,
        rotary_pos_cos_sin=None,
        attention_bias=None,
        packed_seq_params=None,
        sequence_len_offset=None,
        *,
        inference_params=None,
    ):
        kwargs = dict(
            key_value_states=key_value_states,
            rotary_pos_cos=rotary_pos_cos,
            rotary_pos_sin=rotary_pos_sin,
            rotary_pos_cos_sin=rotary_pos_cos_sin,
            attention_bias=attention_bias,
            packed_seq_params=packed_seq_params,
            sequence_len_offset=sequence_len_offset,
        )
        if rotary_pos_emb is None or not self._rope_here(
            inference_context or inference_params, packed_seq_params
        ):
            return super().forward(
                hidden_states,
                attention_mask,
                inference_context=inference_context,
                rotary_pos_emb=rotary_pos_emb,
                inference_params=inference_params,
                **kwargs,
            )
        no_rope = self.config.no_rope_freq[self.layer_number - 1] if self.config.no_rope_freq else False
        if not no_rope:
            if not isinstance(rotary_pos_emb, tuple):
                rotary_pos_emb = (rotary_pos_emb, rotary_pos_emb)
            mscale = _yarn_get_concentration_factor_from_config(self.config)
            self._pending_rotary = (*rotary_pos_emb, mscale)
        try:
            return super().forward(hidden_states, attention_mask, rotary_pos_emb=None, **kwargs)
        finally:
            self._pending_rotary = None

    def get_query_key_value_tensors(self, hidden_states, key_value_states=None, output_gate=False, split_qkv=True):
        out = super().get_query_key_value_tensors(
            hidden_states, key_value_states, output_gate=output_gate, split_qkv=split_qkv
        )
        if self._pending_rotary is None or not split_qkv:
            return out
        q_freqs, k_freqs, mscale = self._pending_rotary
        query, key, *rest = out
        if q_freqs is not None:
            query = rope(query, q_freqs, mscale)
        if k_freqs is not None:
            key = rope(key, k_freqs, mscale)
        return (query, key, *rest)
