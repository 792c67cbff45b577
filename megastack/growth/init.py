"""Fresh weights for parts that growth creates, drawn exactly as `megastack.model` draws them.

`megastack.model.init_weights_layout_invariant` seeds one generator per (seed, checkpoint key,
layer) and draws the whole global tensor from it. Drawing new layers/units the same way means a
G_random layer equals the layer a freshly built target model (same seed) would have had.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from megastack.config import ModelConfig
from megastack.model import init_global_tensor


def fresh_tensor(
    key: str,
    shape: Sequence[int],
    layer: Optional[int],
    model_cfg: ModelConfig,
    seed: int,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The initial value of `key` (one layer's slice when `layer` is given) in a model of
    `model_cfg` built with `seed`."""
    return init_global_tensor(key, shape, layer, model_cfg, seed).to(dtype)


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
