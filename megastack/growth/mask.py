"""MSG-style growth masks: the new layers' residual branches faded in after growth.

With G_random the repeated layers of a stacking list are freshly initialised; following Masked
Structural Growth (Yao et al. 2023, which Du et al. 2024 cite for G_random), their attention and
MLP outputs can be multiplied by a factor that starts at 0 and rises linearly to 1. At 0 a new
layer is the identity, so right after growth the model computes what the copied layers compute
(with first occurrences 0..L-1 in order: the small model's function); once the factor reaches 1
the hooks are removed and the model is megatron-core's plain GPT again.

The factor scales the output (and the skipped bias) of each new layer's attention output
projection and MLP fc2, i.e. the two residual branches, on whatever ranks hold those layers.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

import torch

logger = logging.getLogger(__name__)


class GrowthMask:
    """Forward hooks scaling the residual branches of `layers` (0-based, global) in `chunks`
    by `value`; `update(k)` sets it for the k-th iteration after growth."""

    def __init__(self, chunks: Iterable[torch.nn.Module], layers: Sequence[int],
                 ramp_iters: int) -> None:
        assert ramp_iters >= 1, ramp_iters
        self.ramp_iters = ramp_iters
        self.value = 0.0
        new_layers = set(layers)
        self._handles = []
        for chunk in chunks:
            for layer in chunk.decoder.layers:
                # megatron-core numbers layers from 1 across pipeline stages and chunks.
                if layer.layer_number - 1 in new_layers:
                    for branch_output in (layer.self_attention.linear_proj, layer.mlp.linear_fc2):
                        self._handles.append(branch_output.register_forward_hook(self._scale))

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def _scale(self, module: torch.nn.Module, inputs: Any, output: Any) -> Any:
        out, bias = output  # megatron-core's row-parallel linears return (output, skipped bias)
        return out * self.value, (bias * self.value if bias is not None else None)

    def update(self, iterations_since_growth: int) -> None:
        """The factor for the `iterations_since_growth`-th training iteration after growth (0:
        before the first one, as the growth point's evaluation sees it)."""
        self.value = min(1.0, max(0, iterations_since_growth) / self.ramp_iters)
        if self.value >= 1.0 and self._handles:
            self.remove()
            logger.info("growth mask at 1 after %d iterations: hooks removed", self.ramp_iters)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
