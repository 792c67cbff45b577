"""MSG-style growth masks: what G_random added, faded in after growth.

With G_random the new parts of a grown model are freshly initialised; following Masked
Structural Growth (Yao et al. 2023, which Du et al. 2024 cite for G_random) they can be
multiplied by a factor m that starts at 0 and rises linearly to 1, so that right after growth the
model computes what the small model computed and the new parts join gradually. Once m reaches 1
the hooks are removed and the model is megatron-core's plain GPT again.

Depth (the repeated layers of a stacking list): each new layer's two residual branches -- the
outputs (and skipped biases) of its attention output projection and MLP fc2 -- are scaled by m,
so at 0 the layer is the identity (with first occurrences 0..L-1 in order: the small model).

Width (`--width-operator random`; `WidthMaskUnits`):
- new FFN neurons and new attention heads: their activations, the inputs of linear_fc2 and
  linear_proj, are scaled by m (on each tensor-parallel rank, its slice of them);
- new hidden units: everything that writes them into the residual stream (the embedding output,
  linear_proj and linear_fc2 outputs and biases) is scaled by m, so at 0 they hold 0. RMSNorm
  then averages the copied units' squares over h' instead of h units, which scales its output by
  sqrt(h'/h). Each norm is therefore made an RMSNorm over n = h + m (h' - h) units: its output
  multiplied by sqrt(n / h') and its eps by n / h', which at m = 0 is exactly the source's norm
  (the eps matters: at initialisation mean(x^2) of the embeddings is 4e-4, eps 1e-5) and at
  m = 1 the plain one. With Transformer Engine the two layer norms are fused into linear_qkv
  and linear_fc1, whose matmul output (bias excluded) takes the factor instead. LayerNorm's mean
  also moves, so masking new hidden units needs RMSNorm.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import torch

from megastack.config import ModelConfig
from megastack.growth.width import WIDTH_FIELDS, WidthGrowth

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WidthMaskUnits:
    """Global indices of the units G_random width growth added, per role of
    `megastack.growth.width`: ``hidden`` (of h'), ``attn`` (of heads * head_dim), ``ffn``."""

    hidden: torch.Tensor
    hidden_size: int
    source_hidden_size: int
    attn: torch.Tensor
    attn_size: int
    ffn: torch.Tensor
    ffn_size: int

    @classmethod
    def from_widths(cls, target: ModelConfig, source_widths: dict[str, int]) -> "WidthMaskUnits":
        """The new units of `target` grown by `--width-operator random` from a model with
        `source_widths` (megastack.growth.width's WIDTH_FIELDS)."""
        # Width growth keeps the head width (which, given explicitly, is not hidden / heads).
        source = target.replace(kv_channels=target.head_dim,
                                **{name: source_widths[name] for name in WIDTH_FIELDS})
        if source.hidden_size != target.hidden_size and target.normalization != "RMSNorm":
            raise ValueError(
                f"--growth-mask-iters: the checkpoint was widened from hidden size "
                f"{source.hidden_size} to {target.hidden_size} with {target.normalization}, whose "
                f"mean over the widened residual stream moves the copied units; masking new "
                f"hidden units needs RMSNorm (grow the hidden size with --width-operator direct "
                f"or zero, or train without --growth-mask-iters)")
        maps = WidthGrowth(source, target, "random").maps
        return cls(hidden=maps["hidden"].new, hidden_size=target.hidden_size,
                   source_hidden_size=source.hidden_size,
                   attn=maps["attn"].new, attn_size=maps["attn"].n_dst,
                   ffn=maps["ffn"].new, ffn_size=maps["ffn"].n_dst)

    @property
    def empty(self) -> bool:
        return not (self.hidden.numel() or self.attn.numel() or self.ffn.numel())


def _tp_rank() -> int:
    from megatron.core import parallel_state

    return parallel_state.get_tensor_model_parallel_rank()


class GrowthMask:
    """Hooks scaling the new parts of a grown model by `value` (see the module docstring):
    the layers `layers` (0-based, global) and, given `width`, the new units of width growth.
    `update(k)` sets the value for the k-th iteration after growth."""

    def __init__(self, chunks: Iterable[torch.nn.Module], layers: Sequence[int],
                 ramp_iters: int, width: Optional[WidthMaskUnits] = None) -> None:
        assert ramp_iters >= 1, ramp_iters
        self.ramp_iters = ramp_iters
        self.value = 0.0
        self.width = width if width is not None and not width.empty else None
        self._handles: list = []
        self._unit_scales: dict = {}
        self._norm_eps: list[tuple[torch.nn.Module, float]] = []  # (norm, its own eps)
        new_layers = set(layers)
        for chunk in chunks:
            if self.width is not None and self.width.hidden.numel():
                if getattr(chunk, "pre_process", False):
                    self._hook(chunk.embedding, self._mask_new_hidden)
                final_norm = getattr(chunk.decoder, "final_layernorm", None)
                if final_norm is not None:
                    self._hook_norm(final_norm, self._rescale_norm)
            for layer in chunk.decoder.layers:
                # megatron-core numbers layers from 1 across pipeline stages and chunks.
                branches = (layer.self_attention.linear_proj, layer.mlp.linear_fc2)
                if layer.layer_number - 1 in new_layers:
                    for branch in branches:
                        self._hook(branch, self._scale_branch)
                if self.width is not None:
                    self._hook_width(layer, branches)
        self._set_norm_eps()

    def _hook(self, module: torch.nn.Module, fn: Callable, pre: bool = False) -> None:
        register = module.register_forward_pre_hook if pre else module.register_forward_hook
        self._handles.append(register(fn))

    def _hook_width(self, layer: torch.nn.Module, branches) -> None:
        from megatron.core.transformer.identity_op import IdentityOp

        w = self.width
        proj, fc2 = branches
        if w.attn.numel():
            self._hook(proj, self._input_masker(w.attn, w.attn_size), pre=True)
        if w.ffn.numel():
            self._hook(fc2, self._input_masker(w.ffn, w.ffn_size), pre=True)
        if w.hidden.numel():
            for branch in branches:
                self._hook(branch, self._mask_new_hidden_branch)
            for norm, fused_into in ((layer.input_layernorm, layer.self_attention.linear_qkv),
                                     (layer.pre_mlp_layernorm, layer.mlp.linear_fc1)):
                if isinstance(norm, IdentityOp):  # Transformer Engine: norm fused into the linear
                    self._hook_norm(fused_into, self._rescale_normed_linear)
                else:
                    self._hook_norm(norm, self._rescale_norm)

    def _hook_norm(self, norm: torch.nn.Module, fn: Callable) -> None:
        eps = getattr(norm, "eps", None)
        if not isinstance(eps, float):
            self.remove()
            raise ValueError(f"growth mask: {type(norm).__name__} keeps no float eps to adjust; "
                             f"masking new hidden units needs a norm with one")
        self._hook(norm, fn)
        self._norm_eps.append((norm, eps))

    def _set_norm_eps(self, restore: bool = False) -> None:
        if not self._norm_eps:
            return
        h, h_new = self.width.source_hidden_size, self.width.hidden_size
        units = h + self.value * (h_new - h)
        for norm, eps in self._norm_eps:
            norm.eps = eps if restore else eps * units / h_new

    @property
    def active(self) -> bool:
        return bool(self._handles)

    # ---- the factors -------------------------------------------------------------------------
    def _unit_scale(self, new: torch.Tensor, size: int, local: int,
                    like: torch.Tensor) -> torch.Tensor:
        """[local]: 1 for old units, `value` for new ones, over this tensor-parallel rank's
        contiguous slice of `size` units (all of them when local == size)."""
        assert size % local == 0, (size, local)
        start = _tp_rank() * local if local != size else 0
        key = (new.data_ptr(), start, local, self.value, like.device, like.dtype)
        scale = self._unit_scales.get(key)
        if scale is None:
            full = torch.ones(size, dtype=torch.float32)
            full[new] = self.value
            scale = full[start:start + local].to(device=like.device, dtype=like.dtype)
            if len(self._unit_scales) > 64:  # values of past iterations
                self._unit_scales.clear()
            self._unit_scales[key] = scale
        return scale

    def _norm_factor(self) -> float:
        h, h_new = self.width.source_hidden_size, self.width.hidden_size
        return math.sqrt((h + self.value * (h_new - h)) / h_new)

    # ---- the hooks ---------------------------------------------------------------------------
    # megatron-core's linears (local and TE) return (output, bias or None).
    def _scale_branch(self, module: torch.nn.Module, inputs: Any, output: Any) -> Any:
        out, bias = output
        return out * self.value, (bias * self.value if bias is not None else None)

    def _hidden_scale(self, like: torch.Tensor) -> torch.Tensor:
        n = self.width.hidden_size
        return self._unit_scale(self.width.hidden, n, n, like)

    def _mask_new_hidden(self, module: torch.nn.Module, inputs: Any, output: torch.Tensor):
        return output * self._hidden_scale(output)

    def _mask_new_hidden_branch(self, module: torch.nn.Module, inputs: Any, output: Any) -> Any:
        out, bias = output
        return (out * self._hidden_scale(out),
                bias * self._hidden_scale(bias) if bias is not None else None)

    def _input_masker(self, new: torch.Tensor, size: int) -> Callable:
        def mask_inputs(module: torch.nn.Module, inputs: tuple) -> tuple:
            x = inputs[0]
            return (x * self._unit_scale(new, size, x.shape[-1], x),) + tuple(inputs[1:])
        return mask_inputs

    def _rescale_norm(self, module: torch.nn.Module, inputs: Any, output: torch.Tensor):
        return output * self._norm_factor()

    def _rescale_normed_linear(self, module: torch.nn.Module, inputs: Any, output: Any) -> Any:
        # norm(x) * r through a linear is r * (W norm(x)); a bias added inside stays as it is.
        out, bias = output
        r = self._norm_factor()
        inner_bias = getattr(module, "bias", None)
        if bias is None and isinstance(inner_bias, torch.Tensor) and inner_bias.numel():
            return (out - inner_bias) * r + inner_bias, None
        return out * r, bias

    # ---- the ramp ----------------------------------------------------------------------------
    def update(self, iterations_since_growth: int) -> None:
        """The factor for the `iterations_since_growth`-th training iteration after growth (0:
        before the first one, as the growth point's evaluation sees it)."""
        self.value = min(1.0, max(0, iterations_since_growth) / self.ramp_iters)
        if self._handles:
            self._set_norm_eps()
        if self.value >= 1.0 and self._handles:
            self.remove()
            logger.info("growth mask at 1 after %d iterations: hooks removed", self.ramp_iters)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._unit_scales = {}
        self._set_norm_eps(restore=True)
        self._norm_eps = []
