"""Hugging Face Llama <-> megatron-core GPT: the architecture and the weight names and layouts.

megastack's models are Llama's (RMSNorm, SwiGLU, RoPE, GQA), so a checkpoint maps onto
``LlamaForCausalLM`` tensor for tensor, onto ``Qwen2ForCausalLM`` (Llama with biases in the
QKV projection only: megatron-core's add_qkv_bias) or onto ``Qwen3ForCausalLM`` (Llama with
each head's queries and keys RMS-normalised before RoPE: megatron-core's qk_layernorm, whose
q_layernorm/k_layernorm are Qwen3's q_norm/k_norm); three layouts differ:

- megatron-core's ``linear_qkv`` holds, for each query group, that group's query heads, then
  its key head, then its value head ([g0: q q k v][g1: q q k v] ...); HF keeps ``q_proj``,
  ``k_proj`` and ``v_proj`` apart;
- megatron-core's ``linear_fc1`` is ``[gate; up]``; HF has ``gate_proj`` and ``up_proj``;
- megatron-core stacks each layer's tensor on a leading layer axis (``decoder.layers.*``).

RoPE needs no permutation: megatron-core's default (non-interleaved) rotary embedding rotates
the two halves of each head as HF's Llama does. megatron-core's side is "global state": full
tensors under its checkpoint keys (as megastack.growth.state and the dist checkpoint reader give
them), one layer's slice at a time for the export and the import.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch

from megastack.config import ModelConfig

# megatron-core key (layer-stacked under decoder.layers.) -> the HF name of one layer's tensor.
_LAYER = "decoder.layers."
_QKV = _LAYER + "self_attention.linear_qkv.weight"
_QKV_BIAS = _LAYER + "self_attention.linear_qkv.bias"
_FC1 = _LAYER + "mlp.linear_fc1.weight"
_FC1_BIAS = _LAYER + "mlp.linear_fc1.bias"
_DIRECT_LAYER_KEYS = {
    _LAYER + "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    _LAYER + "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    _LAYER + "self_attention.linear_proj.bias": "self_attn.o_proj.bias",
    _LAYER + "mlp.linear_fc1.layer_norm_weight": "post_attention_layernorm.weight",
    _LAYER + "mlp.linear_fc2.weight": "mlp.down_proj.weight",
    _LAYER + "mlp.linear_fc2.bias": "mlp.down_proj.bias",
    _LAYER + "self_attention.q_layernorm.weight": "self_attn.q_norm.weight",
    _LAYER + "self_attention.k_layernorm.weight": "self_attn.k_norm.weight",
}
_GLOBAL_KEYS = {
    "embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "decoder.final_layernorm.weight": "model.norm.weight",
    "output_layer.weight": "lm_head.weight",
}
# megatron-core's Llama 3.x RoPE scaling: only its factor is a parameter.
_LLAMA3_ROPE_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192}


def check_llama_compatible(model: ModelConfig, what: str) -> None:
    """Refuse what HF's Llama cannot express, naming the difference."""
    differences = []
    if model.normalization != "RMSNorm":
        differences.append(f"{model.normalization} (Llama has RMSNorm)")
    if not model.swiglu:
        differences.append("a GeLU MLP (Llama has SwiGLU)")
    if model.position_embedding_type != "rope":
        differences.append(f"{model.position_embedding_type} positions (Llama has RoPE)")
    if model.qk_layernorm and model.qkv_bias:
        differences.append("q/k norms with biases (Qwen3's attention_bias would add one to "
                           "o_proj, Llama has no q/k norm)")
    if differences:
        raise ValueError(f"{what}: the model has {', '.join(differences)}: Hugging Face's "
                         f"LlamaForCausalLM cannot hold it")


def is_qwen2(model: ModelConfig) -> bool:
    """Biases in the QKV projection only: Llama's attention_bias would add one to o_proj."""
    return model.add_qkv_bias and not model.add_bias_linear


def is_qwen3(model: ModelConfig) -> bool:
    return model.qk_layernorm


def hf_config(model: ModelConfig, dtype: torch.dtype,
              bos_token_id: Optional[int] = None, eos_token_id: Optional[int] = None
              ) -> dict[str, Any]:
    """config.json of the LlamaForCausalLM (Qwen2ForCausalLM for a QKV-only bias,
    Qwen3ForCausalLM for q/k norms) that computes what `model` computes."""
    check_llama_compatible(model, "export to Hugging Face")
    no_window = {"use_sliding_window": False, "sliding_window": None,
                 "max_window_layers": model.num_layers}
    if is_qwen3(model):
        architecture = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
                        "attention_bias": False, **no_window}
    elif is_qwen2(model):
        architecture = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                        **no_window}
    else:
        architecture = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                        "attention_bias": model.add_bias_linear,
                        "mlp_bias": model.add_bias_linear}
    return {
        **architecture,
        "hidden_size": model.hidden_size,
        "intermediate_size": model.ffn_hidden_size,
        "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.num_attention_heads,
        "num_key_value_heads": model.num_query_groups,
        "head_dim": model.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": model.max_position_embeddings,
        "rms_norm_eps": model.norm_epsilon,
        "rope_theta": float(model.rotary_base),
        "rope_scaling": ({"rope_type": "llama3", "factor": model.rope_scaling_factor,
                          **_LLAMA3_ROPE_FIXED} if model.rope_scaling else None),
        "vocab_size": model.vocab_size,
        "tie_word_embeddings": not model.untie_embeddings_and_output_weights,
        "attention_dropout": model.attention_dropout,
        "initializer_range": model.init_method_std,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }


def model_config_from_hf(config: dict[str, Any], source: str) -> ModelConfig:
    """The ModelConfig of a Llama (or Mistral, Qwen2, Qwen3) config.json; `source` names the
    file in errors."""
    model_type = config.get("model_type")
    if model_type not in ("llama", "mistral", "qwen2", "qwen3"):
        raise ValueError(f"{source}: model_type {model_type!r}: only Llama-architecture models "
                         f"(model_type llama, qwen2, qwen3, or mistral without sliding windows) "
                         f"map onto megastack's GPT")
    qwen = model_type in ("qwen2", "qwen3")
    # Qwen configs name a window size even with the window off.
    windowed = (config.get("use_sliding_window", False) if qwen
                else config.get("sliding_window") is not None)
    if windowed:
        raise ValueError(f"{source}: sliding_window {config.get('sliding_window')}: "
                         f"sliding-window attention is not among megastack's architectures")
    rope = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default"
                                             else None)
    scaling_factor = _llama3_scaling_factor(scaling, source) if scaling else None
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: hidden_act {config['hidden_act']!r}: megastack's SwiGLU "
                         f"uses silu")
    if model_type == "qwen3" and config.get("attention_bias", False):
        raise ValueError(f"{source}: attention_bias true: Qwen3's biases in q, k, v and o_proj "
                         f"(with an MLP without) are not among megastack's architectures")
    if not qwen and (bool(config.get("attention_bias", False))
                     != bool(config.get("mlp_bias", False))):
        raise ValueError(f"{source}: attention_bias {config.get('attention_bias')} and mlp_bias "
                         f"{config.get('mlp_bias')}: megatron-core's add_bias_linear gives every "
                         f"linear layer a bias or none")
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    positions = config.get("max_position_embeddings", 2048)
    return ModelConfig(
        num_layers=config["num_hidden_layers"], hidden_size=hidden, num_attention_heads=heads,
        kv_channels=config.get("head_dim"),  # None, or hidden / heads: the default
        num_query_groups=config.get("num_key_value_heads") or heads,
        ffn_hidden_size=config["intermediate_size"], vocab_size=config["vocab_size"],
        seq_length=positions, max_position_embeddings=positions,
        norm_epsilon=config.get("rms_norm_eps", 1e-6),
        rotary_base=int(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
        untie_embeddings_and_output_weights=not config.get("tie_word_embeddings", False),
        add_bias_linear=not qwen and bool(config.get("attention_bias", False)),
        add_qkv_bias=model_type == "qwen2", qk_layernorm=model_type == "qwen3",
        init_method_std=config.get("initializer_range", 0.02),
        rope_scaling=scaling_factor is not None, rope_scaling_factor=scaling_factor or 8.0,
    )


def _llama3_scaling_factor(scaling: dict[str, Any], source: str) -> float:
    """Llama 3.x's RoPE scaling as megatron-core implements it, or an error naming the values."""
    kind = scaling.get("rope_type", scaling.get("type"))
    fixed = {k: scaling.get(k) for k in _LLAMA3_ROPE_FIXED}
    if kind != "llama3" or any(v is None or float(v) != _LLAMA3_ROPE_FIXED[k]
                               for k, v in fixed.items()):
        raise ValueError(f"{source}: RoPE scaling {scaling}: megastack implements Llama 3.x's "
                         f"(rope_type llama3 with {_LLAMA3_ROPE_FIXED}) only")
    return float(scaling["factor"])


def _qkv_sizes(model: ModelConfig) -> tuple[int, int, int]:
    """Rows of one query group's queries, and of its key (= its value), and the group count."""
    d, groups = model.head_dim, model.num_query_groups
    return model.num_attention_heads // groups * d, d, groups


def split_qkv(qkv: torch.Tensor, model: ModelConfig) -> tuple[torch.Tensor, ...]:
    """One layer's linear_qkv weight (or bias) -> q, k, v in HF's order."""
    q_rows, kv_rows, groups = _qkv_sizes(model)
    grouped = qkv.reshape(groups, q_rows + 2 * kv_rows, *qkv.shape[1:])
    q, k, v = grouped.split([q_rows, kv_rows, kv_rows], dim=1)
    return tuple(t.reshape(-1, *qkv.shape[1:]) for t in (q, k, v))


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              model: ModelConfig) -> torch.Tensor:
    q_rows, kv_rows, groups = _qkv_sizes(model)
    rest = q.shape[1:]
    return torch.cat([q.reshape(groups, q_rows, *rest), k.reshape(groups, kv_rows, *rest),
                      v.reshape(groups, kv_rows, *rest)], dim=1).reshape(-1, *rest)


def is_layer_key(key: str) -> bool:
    return key.startswith(_LAYER)


def hf_tensors(key: str, tensor: torch.Tensor, model: ModelConfig,
               layer: Optional[int] = None) -> Iterator[tuple[str, torch.Tensor]]:
    """The HF (name, tensor) pairs held by megatron-core's `key`: its value, or for a
    layer-stacked key the slice of `layer`. Unknown keys are an error: a tensor HF's Llama has
    no place for would be lost."""
    if key == "output_layer.weight" and not model.untie_embeddings_and_output_weights:
        return  # tied: HF takes lm_head from the embedding
    names = hf_sources(key, model, layer)
    if key in (_QKV, _QKV_BIAS):
        parts = split_qkv(tensor, model)
    elif key in (_FC1, _FC1_BIAS):
        parts = tensor.chunk(2, dim=0)  # [gate; up]
    else:
        parts = (tensor,)
    yield from zip(names, parts)


def hf_sources(key: str, model: ModelConfig, layer: Optional[int] = None) -> list[str]:
    """The HF tensor names megatron-core's `key` is made of (for a layer-stacked key, of the
    slice of `layer`). Unknown keys are an error: megastack's model would miss that tensor."""
    if not is_layer_key(key):
        if key not in _GLOBAL_KEYS:
            raise ValueError(f"{key}: no Hugging Face Llama tensor corresponds to it")
        return [_GLOBAL_KEYS[key]]
    assert layer is not None, f"{key} is layer-stacked: give the layer of its slice"
    prefix = f"model.layers.{layer}."
    if key in (_QKV, _QKV_BIAS):
        suffix = "weight" if key == _QKV else "bias"
        return [f"{prefix}self_attn.{p}.{suffix}" for p in ("q_proj", "k_proj", "v_proj")]
    if key in (_FC1, _FC1_BIAS):
        suffix = "weight" if key == _FC1 else "bias"
        return [f"{prefix}mlp.gate_proj.{suffix}", f"{prefix}mlp.up_proj.{suffix}"]
    if key in _DIRECT_LAYER_KEYS:
        return [prefix + _DIRECT_LAYER_KEYS[key]]
    raise ValueError(f"{key}: no Hugging Face Llama tensor corresponds to it")


def megatron_tensor(key: str, get: Callable[[str], torch.Tensor], model: ModelConfig,
                    layer: Optional[int] = None) -> torch.Tensor:
    """megatron-core's `key` (one layer's slice for a layer-stacked key) from HF tensors;
    `get(name)` returns one HF tensor."""
    parts = [get(name) for name in hf_sources(key, model, layer)]
    if key in (_QKV, _QKV_BIAS):
        return merge_qkv(*parts, model)
    if key in (_FC1, _FC1_BIAS):
        return torch.cat(parts)
    return parts[0]
