"""The ops as autograd functions: the fused kernels for CUDA float32/bfloat16 tensors when the
extension is built, the PyTorch reference otherwise.

Every public function has the same semantics on both paths; see reference.py for definitions.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.distributed as dist

from megastack.kernels import reference
from megastack.kernels._extension import extension

Tensor = torch.Tensor

_KERNEL_DTYPES = (torch.float32, torch.bfloat16)


def _kernel_for(*tensors: Optional[Tensor]):
    """The extension if it should run on these tensors, else None."""
    ext = extension()
    if ext is None:
        return None
    for t in tensors:
        if t is not None and (not t.is_cuda or t.dtype not in _KERNEL_DTYPES):
            return None
    return ext


# ---- RMSNorm ---------------------------------------------------------------------------------


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, residual, eps, ext):
        shape = x.shape
        hidden = shape[-1]
        x2 = x.reshape(-1, hidden).contiguous()
        r2 = residual.reshape(-1, hidden).contiguous() if residual is not None else None
        y, rstd, s = ext.rmsnorm_fwd(x2, r2, weight.contiguous(), float(eps))
        # Backward needs the normalised input: the sum when the residual add is fused.
        ctx.save_for_backward(s if s is not None else x2, rstd, weight)
        ctx.ext, ctx.shape, ctx.has_residual = ext, shape, residual is not None
        if residual is None:
            return y.view(shape)
        return y.view(shape), s.view(shape)

    @staticmethod
    def backward(ctx, dy, dsum=None):
        xin, rstd, weight = ctx.saved_tensors
        hidden = ctx.shape[-1]
        dy2 = dy.reshape(-1, hidden).contiguous()
        ds2 = dsum.reshape(-1, hidden).contiguous() if dsum is not None else None
        dx, dw = ctx.ext.rmsnorm_bwd(dy2, xin, rstd, weight.contiguous(), ds2)
        dx = dx.view(ctx.shape)
        # d(x + residual)/dx = d(x + residual)/dresidual: both inputs get the same gradient.
        return dx, dw, (dx if ctx.has_residual else None), None, None


def rms_norm(
    x: Tensor, weight: Tensor, eps: float, residual: Optional[Tensor] = None
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """RMSNorm over the last dim; with `residual` returns (norm(x + residual), x + residual).

    The kernel takes a weight in float32 or in x's dtype; the output has x's dtype.
    """
    ext = _kernel_for(x, weight, residual)
    if ext is not None and weight.dtype in (torch.float32, x.dtype) and (
        residual is None or residual.dtype == x.dtype
    ):
        return _RMSNorm.apply(x, weight, residual, eps, ext)
    return reference.rms_norm(x, weight, eps, residual)


# ---- SwiGLU ----------------------------------------------------------------------------------


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, ext):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()
        y = ext.swiglu_fwd(x2)
        ctx.save_for_backward(x2)
        ctx.ext, ctx.shape = ext, shape
        return y.view(*shape[:-1], shape[-1] // 2)

    @staticmethod
    def backward(ctx, dy):
        (x2,) = ctx.saved_tensors
        dx = ctx.ext.swiglu_bwd(dy.reshape(x2.shape[0], -1).contiguous(), x2)
        return dx.view(ctx.shape), None


def swiglu(x: Tensor) -> Tensor:
    """silu(gate) * up for x = [gate; up] along the last dim."""
    if x.shape[-1] % 2 != 0:
        raise ValueError(f"swiglu needs an even last dimension ([gate; up]), got {x.shape[-1]}")
    ext = _kernel_for(x)
    if ext is not None:
        return _SwiGLU.apply(x, ext)
    return reference.swiglu(x)


# ---- RoPE ------------------------------------------------------------------------------------


def _unit_stride_last(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


class _RoPE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, freqs, mscale, ext):
        f = freqs.reshape(freqs.shape[0], freqs.shape[-1]).float()
        # cos/sin in PyTorch: the kernel is built with fast math, too inexact for large angles.
        cos = (torch.cos(f) * mscale).contiguous()
        sin = (torch.sin(f) * mscale).contiguous()
        ctx.save_for_backward(cos, sin)
        ctx.ext = ext
        return ext.rope_fwd(_unit_stride_last(t), cos, sin)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        return ctx.ext.rope_bwd(_unit_stride_last(dy), cos, sin), None, None, None


def _rope_kernel_shapes_ok(t: Tensor, freqs: Tensor) -> bool:
    rot = freqs.shape[-1]
    return (
        t.dim() == 4
        and freqs.dim() == 4
        and freqs.shape[0] == t.shape[0]
        and freqs.shape[1] == 1
        and freqs.shape[2] == 1
        and rot % 2 == 0
        and rot <= t.shape[-1]
        and not freqs.requires_grad
    )


def rope(t: Tensor, freqs: Tensor, mscale: float = 1.0) -> Tensor:
    """megatron-core's rotate-half RoPE on t [s, b, h, d] with freqs [s, 1, 1, rot_dim].

    Other freqs layouts (per-batch positions) run the reference.
    """
    ext = _kernel_for(t)
    if ext is not None and freqs.is_cuda and _rope_kernel_shapes_ok(t, freqs):
        return _RoPE.apply(t, freqs, float(mscale), ext)
    return reference.rope(t, freqs, mscale)


# ---- vocab-parallel cross entropy ------------------------------------------------------------


def _group_size_rank(group) -> tuple[int, int]:
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Phases run by `ops` (the extension or reference.py); all-reduces run here."""

    @staticmethod
    def forward(ctx, logits, target, group, ops):
        vocab_local = logits.shape[-1]
        x = logits.reshape(-1, vocab_local).contiguous()
        t = target.reshape(-1).to(torch.int64).contiguous()
        world, rank = _group_size_rank(group)
        vocab_start = rank * vocab_local
        if world == 1:
            row_max, sum_exp, target_logit = ops.ce_fwd_local(x, t)
        else:
            row_max = ops.ce_row_max(x)
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
            stats = ops.ce_sumexp_target(x, t, row_max, vocab_start)
            dist.all_reduce(stats, op=dist.ReduceOp.SUM, group=group)  # one call for both
            sum_exp, target_logit = stats
        loss = torch.log(sum_exp) - target_logit
        ctx.save_for_backward(x, t, row_max, sum_exp)
        ctx.ops, ctx.vocab_start, ctx.shape = ops, vocab_start, logits.shape
        return loss.view(target.shape)

    @staticmethod
    def backward(ctx, grad):
        x, t, row_max, sum_exp = ctx.saved_tensors
        g = grad.reshape(-1).to(row_max.dtype).contiguous()
        dx = ctx.ops.ce_bwd(x, t, row_max, sum_exp, g, ctx.vocab_start)
        return dx.view(ctx.shape), None, None, None


def vocab_parallel_cross_entropy(
    logits: Tensor, target: Tensor, tp_group: Optional["dist.ProcessGroup"] = None
) -> Tensor:
    """Unreduced cross entropy for logits split along the vocabulary over `tp_group`.

    logits: [..., vocab / tp] (this rank's contiguous slice, rank r holding ids
    [r * vocab/tp, (r+1) * vocab/tp)), target: [...] global ids. Returns float32 loss [...]
    (float64 for float64 logits). `tp_group=None` means an unsplit vocabulary.
    Unlike megatron-core's version it does not modify `logits` in place, and it saves the
    logits rather than an fp32 softmax for the backward.
    """
    if logits.shape[:-1] != target.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} disagree: logits "
            "must be target's shape plus a vocabulary dimension"
        )
    ext = _kernel_for(logits)
    ops = ext if ext is not None and target.is_cuda else reference
    return _VocabParallelCrossEntropy.apply(logits, target, tp_group, ops)
