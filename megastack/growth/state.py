"""Global (checkpoint-layout) state dicts of live models: read them out, write them in.

A global state dict maps each checkpoint key to its full tensor, layer-stacked for
`decoder.layers.*` keys -- the same layout growth operators and dist checkpoints use. These
helpers go through the model's own ShardedTensors, so they are right for any layer spec and any
TP/PP/VP layout (each rank reads/writes only its shards).
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch

from megastack.model import _sharded_tensors


def _local_index(sh) -> tuple:
    """Index of this shard inside the global tensor."""
    prepend = sh.prepend_axis_num
    layer = tuple(sh.global_offset[:prepend])
    rest = tuple(slice(off, off + size) for off, size in zip(sh.global_offset[prepend:], sh.local_shape))
    return layer + rest


@torch.no_grad()
def model_global_state(chunks: Iterable[torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Assemble the global tensors of a model held entirely by this process (TP=1, PP=1)."""
    state: dict[str, torch.Tensor] = {}
    filled: dict[str, int] = {}
    for model in chunks:
        for sh in _sharded_tensors(model):
            if sh.key not in state:
                state[sh.key] = torch.zeros(sh.global_shape, dtype=sh.data.dtype)
                filled[sh.key] = 0
            state[sh.key][_local_index(sh)] = sh.data.detach().cpu()
            filled[sh.key] += sh.data.numel()
    partial = {k: (filled[k], v.numel()) for k, v in state.items() if filled[k] != v.numel()}
    if partial:
        raise ValueError(
            f"this process holds only part of these tensors (filled, total): {partial}; "
            f"model_global_state needs a model built with TP=1 and PP=1"
        )
    return state


@torch.no_grad()
def load_global_state(chunks: Iterable[torch.nn.Module], state: dict[str, torch.Tensor],
                      strict: bool = True) -> None:
    """Copy each shard of this rank's chunks from the global tensors in `state`."""
    for model in chunks:
        for sh in _sharded_tensors(model):
            if sh.key not in state:
                if strict:
                    raise KeyError(f"{sh.key} (global shape {tuple(sh.global_shape)}) is missing from the state")
                continue
            full = state[sh.key]
            if tuple(full.shape) != tuple(sh.global_shape):
                raise ValueError(
                    f"{sh.key}: the state has shape {tuple(full.shape)}, the model needs "
                    f"{tuple(sh.global_shape)}"
                )
            sh.data.copy_(full[_local_index(sh)].to(sh.data.dtype))


def parameter_sources(model: torch.nn.Module) -> dict[str, tuple[str, Optional[int]]]:
    """For a model held by one process (TP=1, PP=1): parameter name -> (checkpoint key, layer
    index or None), so that the parameter equals ``state[key][layer]`` (or ``state[key]``).

    Matched through storage, so it holds for any layer spec's parameter naming."""
    by_storage: dict[int, tuple[str, Optional[int], tuple]] = {}
    for sh in _sharded_tensors(model):
        layer = int(sh.global_offset[0]) if sh.prepend_axis_num else None
        full_shape = tuple(sh.global_shape[sh.prepend_axis_num:])
        by_storage.setdefault(sh.data.untyped_storage().data_ptr(), (sh.key, layer, full_shape))
    out = {}
    for name, param in model.named_parameters():
        found = by_storage.get(param.untyped_storage().data_ptr())
        if found is None:
            raise ValueError(f"parameter {name} has no ShardedTensor in the model's sharded_state_dict")
        key, layer, full_shape = found
        if tuple(param.shape) != full_shape:
            raise ValueError(
                f"parameter {name} has shape {tuple(param.shape)} but {key} is {full_shape} per "
                f"layer: parameter_sources needs a model built with TP=1 and PP=1"
            )
        out[name] = (key, layer)
    return out
