"""Depth growth on layer-stacked global tensors: [L_src, ...] -> [L_dst, ...].

Megatron's torch_dist checkpoints store every `decoder.layers.*` parameter stacked over layers,
so depth growth is a per-key operation on the leading axis, done tensor by tensor without a
model. Operators (Du et al., 2024):

- ``stack``  (G_stack / depthwise G_direct): target layer i = source layer plan[i]; any list.
- ``zero``   (G_zero): like stack, but every repeat of a source layer after its first occurrence
  has its attention output projection and MLP output projection zeroed. Such a layer adds 0 to
  the residual stream, so the grown model computes exactly the source function -- provided the
  first occurrences visit every source layer in order (checked).
- ``random`` (G_random): first occurrences copied, repeats freshly initialised exactly as a new
  target model (same seed) would initialise those layers.
- ``shrink`` (Inheritune): keep the listed layers (no repeats, fewer than the source has).

Non-layer tensors (embedding, final norm, output layer) are copied unchanged.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from megastack.config import ModelConfig
from megastack.growth.init import fresh_tensor
from megastack.growth.plans import StackingPlan

logger = logging.getLogger(__name__)

DEPTH_OPERATORS = ("stack", "zero", "random", "shrink")
LAYER_KEY_MARKER = "decoder.layers."
# Output projections into the residual stream: zeroing them turns a layer into the identity.
RESIDUAL_OUTPUT_SUFFIXES = (
    "self_attention.linear_proj.weight",
    "self_attention.linear_proj.bias",
    "mlp.linear_fc2.weight",
    "mlp.linear_fc2.bias",
)


def is_layer_key(key: str) -> bool:
    """True for layer-stacked checkpoint keys (`decoder.layers.*`), whose axis 0 is the layer."""
    return LAYER_KEY_MARKER in key


def source_layer_map(plan: StackingPlan) -> list[tuple[int, int]]:
    """[(target_layer, source_layer), ...] in target order."""
    return list(enumerate(plan.layers))


def repeated_positions(plan: StackingPlan) -> list[int]:
    """Target positions whose source layer already appeared earlier in the plan."""
    seen: set[int] = set()
    repeats = []
    for target, source in enumerate(plan.layers):
        if source in seen:
            repeats.append(target)
        seen.add(source)
    return repeats


def stack(tensor: torch.Tensor, plan: StackingPlan) -> torch.Tensor:
    """G_stack / G_direct: index_select on the layer axis."""
    _check_layers(tensor, plan)
    return tensor.index_select(0, torch.tensor(plan.layers, dtype=torch.long, device=tensor.device))


def zero(key: str, tensor: torch.Tensor, plan: StackingPlan) -> torch.Tensor:
    """G_zero: stack, then zero the residual output projections of repeated layers."""
    out = stack(tensor, plan)
    if key.endswith(RESIDUAL_OUTPUT_SUFFIXES):
        repeats = repeated_positions(plan)
        if repeats:
            out[torch.tensor(repeats, dtype=torch.long, device=out.device)] = 0
    return out


def random(key: str, tensor: torch.Tensor, plan: StackingPlan, target_cfg: ModelConfig,
           seed: int) -> torch.Tensor:
    """G_random: stack, then re-draw repeated layers as a fresh target model would."""
    out = stack(tensor, plan)
    for target in repeated_positions(plan):
        out[target] = fresh_tensor(key, out.shape[1:], target, target_cfg, seed, out.dtype).to(out.device)
    return out


def shrink(tensor: torch.Tensor, plan: StackingPlan) -> torch.Tensor:
    """Inheritune: keep the listed layers."""
    check_shrink_plan(plan, tensor.shape[0])
    return stack(tensor, plan)


def check_shrink_plan(plan: StackingPlan, source_layers: int) -> None:
    if len(set(plan.layers)) != len(plan.layers):
        raise ValueError(
            f"shrink keeps each listed layer once, but the plan repeats layers: {list(plan.layers)}; "
            f"use --operator stack to repeat layers"
        )
    if len(plan.layers) >= source_layers:
        raise ValueError(
            f"shrink must keep fewer than the source's {source_layers} layers, got "
            f"{len(plan.layers)}: {list(plan.layers)}"
        )


def check_zero_plan(plan: StackingPlan, source_layers: int,
                    operator_flag: str = "--operator") -> None:
    """G_zero preserves the function only if first occurrences are 0, 1, ..., L_src-1 in order.
    `operator_flag` is the calling tool's name for the operator flag."""
    firsts: list[int] = []
    for source in plan.layers:
        if source not in firsts:
            firsts.append(source)
    if firsts != list(range(source_layers)):
        raise ValueError(
            f"{operator_flag} zero keeps the source function only when every source layer appears and "
            f"their first occurrences are in order 0..{source_layers - 1}; the plan's first "
            f"occurrences are {firsts} (parsed list: {list(plan.layers)}). Reorder the plan or use "
            f"{operator_flag} stack"
        )


def _check_layers(tensor: torch.Tensor, plan: StackingPlan) -> None:
    if tensor.dim() == 0:
        raise ValueError("a layer-stacked tensor needs a leading layer axis, got a scalar")
    bad = sorted({i for i in plan.layers if i >= tensor.shape[0]})
    if bad:
        raise ValueError(
            f"stacking plan uses source layer(s) {bad} but the tensor has {tensor.shape[0]} layers "
            f"(shape {tuple(tensor.shape)}); parsed list: {list(plan.layers)}"
        )


class DepthGrowth:
    """Per-key depth growth, decided once and applied to each checkpoint tensor as it streams by.

    `transform(key, tensor)` takes the full global tensor of one checkpoint key (layer axis first
    for `decoder.layers.*` keys) and returns the target's global tensor. Non-layer keys pass
    through unchanged (the same tensor object).
    """

    def __init__(
        self,
        plan: StackingPlan,
        operator: str = "stack",
        target_cfg: Optional[ModelConfig] = None,
        seed: int = 1234,
        source_num_layers: Optional[int] = None,
    ) -> None:
        if operator not in DEPTH_OPERATORS:
            raise ValueError(f"--operator for depth growth must be one of {DEPTH_OPERATORS}, got {operator!r}")
        if operator == "random" and target_cfg is None:
            raise ValueError("the random depth operator needs the target ModelConfig to initialise new layers")
        self.plan = plan
        self.operator = operator
        self.target_cfg = target_cfg
        self.seed = seed
        self.source_num_layers = source_num_layers
        if source_num_layers is not None:
            self._validate(source_num_layers)
        elif target_cfg is not None and len(plan) != target_cfg.num_layers:
            raise ValueError(
                f"--stacking-list has {len(plan)} entries but the target model has "
                f"{target_cfg.num_layers} layers; parsed list: {list(plan.layers)}"
            )

    def _validate(self, source_layers: int) -> None:
        target_layers = self.target_cfg.num_layers if self.target_cfg is not None else len(self.plan)
        self.plan.validate(source_layers, target_layers)
        if self.operator == "zero":
            check_zero_plan(self.plan, source_layers)
        if self.operator == "shrink":
            check_shrink_plan(self.plan, source_layers)

    def layer_map(self) -> list[tuple[int, int]]:
        return source_layer_map(self.plan)

    def transform(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        if not is_layer_key(key):
            return tensor
        self._check_source(key, tensor)
        if self.operator == "stack":
            return stack(tensor, self.plan)
        if self.operator == "zero":
            return zero(key, tensor, self.plan)
        if self.operator == "random":
            return random(key, tensor, self.plan, self.target_cfg, self.seed)
        return shrink(tensor, self.plan)

    def transform_optimizer_state(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        """Adam moments (exp_avg, exp_avg_sq) of `key`: copied where the weight was copied, zero
        where the operator zeroed or re-drew the weight (those start like a fresh optimizer)."""
        if not is_layer_key(key):
            return tensor
        self._check_source(key, tensor)
        out = stack(tensor, self.plan)
        fresh = self.operator == "random" or (self.operator == "zero" and key.endswith(RESIDUAL_OUTPUT_SUFFIXES))
        repeats = repeated_positions(self.plan)
        if fresh and repeats:
            out[torch.tensor(repeats, dtype=torch.long, device=out.device)] = 0
        return out

    def _check_source(self, key: str, tensor: torch.Tensor) -> None:
        if self.source_num_layers is None:
            self.source_num_layers = int(tensor.shape[0])
            self._validate(self.source_num_layers)
        elif tensor.shape[0] != self.source_num_layers:
            raise ValueError(
                f"{key}: expected {self.source_num_layers} source layers on axis 0, got shape "
                f"{tuple(tensor.shape)}"
            )
