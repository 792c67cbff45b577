"""The fused-kernel layer spec: megatron-core's local spec with the kernels plugged in.

It is built from `get_gpt_layer_local_spec` and swaps only module classes, so everything else
(linear layers, core attention, bias-dropout-add, the norm-key mapping used in checkpoints)
stays exactly the local spec's:

- input_layernorm / pre_mlp_layernorm (and q/k norms): FusedRMSNorm
- self_attention: FusedRoPESelfAttention (RoPE by the kernel)
- mlp: FusedSwiGLUMLP (SwiGLU by the kernel); MoE experts keep megatron-core's MLP, whose
  SequentialMLP builds its experts from a fixed class.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig

from megastack.kernels.modules import FusedRMSNorm, FusedRoPESelfAttention, FusedSwiGLUMLP


def get_gpt_layer_fused_spec(
    num_experts: Optional[int] = None, qk_layernorm: bool = False
) -> ModuleSpec:
    """A transformer-layer ModuleSpec like the local spec, with the fused kernels.

    Needs an RMSNorm + SwiGLU config (normalization="RMSNorm", gated_linear_unit=True,
    activation_func=F.silu); the modules raise ValueError otherwise.
    """
    local = get_gpt_layer_local_spec(
        num_experts=num_experts, qk_layernorm=qk_layernorm, normalization="RMSNorm"
    )
    layer = local.submodules
    attention = layer.self_attention
    qk_norm = FusedRMSNorm if qk_layernorm else IdentityOp
    fused_attention = dataclasses.replace(
        attention,
        module=FusedRoPESelfAttention,
        submodules=dataclasses.replace(
            attention.submodules, q_layernorm=qk_norm, k_layernorm=qk_norm
        ),
    )
    mlp = layer.mlp
    if num_experts is None:
        mlp = dataclasses.replace(mlp, module=FusedSwiGLUMLP)
    return dataclasses.replace(
        local,
        submodules=dataclasses.replace(
            layer,
            input_layernorm=FusedRMSNorm,
            self_attention=fused_attention,
            pre_mlp_layernorm=FusedRMSNorm,
            mlp=mlp,
        ),
    )


def get_gpt_block_fused_spec(
    config: TransformerConfig,
    num_experts: Optional[int] = None,
    qk_layernorm: bool = False,
    vp_stage: Optional[int] = None,
    pp_rank: Optional[int] = None,
) -> TransformerBlockSubmodules:
    """The whole decoder block: the fused layer spec for this stage's layers plus a fused final
    norm. Pass it to GPTModel as `transformer_layer_spec`. Given a bare layer spec, megatron-core
    picks the final norm itself (torch's RMSNorm without TE/apex), which has the same keys but
    does not support sequence parallelism.
    """
    layer = get_gpt_layer_fused_spec(num_experts=num_experts, qk_layernorm=qk_layernorm)
    num_layers = get_num_layers_to_build(config, vp_stage=vp_stage, pp_rank=pp_rank)
    return TransformerBlockSubmodules(layer_specs=[layer] * num_layers, layer_norm=FusedRMSNorm)
