"""Fresh weights for parts that growth creates, drawn exactly as `megastack.model` draws them.

`megastack.model.init_weights_layout_invariant` seeds one generator per (seed, checkpoint key,
layer) and draws the whole global tensor from it. Drawing new layers/units the same way means a
G_random layer equals the layer a freshly built target model (same seed) would have had.
"""

from __future__ import annotations

import math
import zlib
from typing import Optional, Sequence

import torch

from megastack.config import ModelConfig
from megastack.model import _init_kind


def fresh_tensor(
    key: str,
    shape: Sequence[int],
    layer: Optional[int],
    model_cfg: ModelConfig,
    seed: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The initial value of `key` (one layer's slice when `layer` is given) in a model of
    `model_cfg` built with `seed`: normal(0, std), output projections std/sqrt(2L), norms 1."""
    kind = _init_kind(key)
    if kind == "ones":
        return torch.ones(tuple(shape), dtype=dtype)
    if kind == "zeros":
        return torch.zeros(tuple(shape), dtype=dtype)
    std = model_cfg.init_method_std
    if kind == "scaled_normal":
        std = std / math.sqrt(2.0 * model_cfg.num_layers)
    layer_index = () if layer is None else (layer,)
    gen = torch.Generator()
    gen.manual_seed(zlib.crc32(f"{seed}|{key}|{layer_index}".encode()) & 0x7FFFFFFF)
    full = torch.empty(tuple(shape), dtype=torch.float32)
    full.normal_(0.0, std, generator=gen)
    return full.to(dtype)


def fresh_like_stacked(
    key: str,
    shape: Sequence[int],
    layers: Optional[Sequence[int]],
    model_cfg: ModelConfig,
    seed: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """`fresh_tensor` for a layer-stacked key: shape is [len(layers), ...], one draw per layer."""
    if layers is None:
        return fresh_tensor(key, shape, None, model_cfg, seed, dtype)
    return torch.stack([fresh_tensor(key, shape[1:], l, model_cfg, seed, dtype) for l in layers])
