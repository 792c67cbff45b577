"""Plain-PyTorch definitions of every kernel: the CPU path and the oracle the kernels are tested
against.

The elementwise ops follow megatron-core's own unfused code operation for operation (same dtype
casts), so a model on the reference path computes what the stock local spec computes.
Statistics are taken in at least float32 (float64 stays float64, for gradcheck).
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


# ---- RMSNorm ---------------------------------------------------------------------------------


def rms_norm(
    x: Tensor, weight: Tensor, eps: float, residual: Optional[Tensor] = None
) -> Union[Tensor, tuple[Tensor, Tensor]]:
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dim, in x's dtype.

    With `residual`, normalises s = x + residual and returns (y, s).
    """
    if residual is not None:
        s = x + residual
        return rms_norm(s, weight, eps), s
    xf = x.to(_compute_dtype(x.dtype))
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * rstd * weight.to(xf.dtype)).to(x.dtype)


# ---- SwiGLU ----------------------------------------------------------------------------------


def swiglu(x: Tensor) -> Tensor:
    """silu(gate) * up for x = [gate; up] along the last dim (megatron-core's fc1 layout)."""
    gate, up = torch.chunk(x, 2, dim=-1)
    return F.silu(gate) * up


# ---- RoPE ------------------------------------------------------------------------------------


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = torch.chunk(x, 2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope(t: Tensor, freqs: Tensor, mscale: float = 1.0) -> Tensor:
    """Non-interleaved rotary embedding on [s, b, h, d] with freqs [s, 1, 1, rot_dim].

    Channels beyond rot_dim pass through. Mirrors megatron-core's `_apply_rotary_pos_emb_bshd`
    (cos/sin computed in the freqs' dtype, then cast to t's dtype).
    """
    rot_dim = freqs.shape[-1]
    t_rot, t_pass = t[..., :rot_dim], t[..., rot_dim:]
    cos_ = (torch.cos(freqs) * mscale).to(t.dtype)
    sin_ = (torch.sin(freqs) * mscale).to(t.dtype)
    t_rot = (t_rot * cos_) + (_rotate_half(t_rot) * sin_)
    return torch.cat((t_rot, t_pass), dim=-1)


# ---- vocab-parallel cross entropy ------------------------------------------------------------
# The four phases below have the signatures of the extension's ce_* functions, so the autograd
# function in functions.py runs the same tensor-parallel glue with either implementation.
# logits are [rows, vocab_local]; target [rows] holds global ids; stats are in the compute dtype.


def ce_row_max(logits: Tensor) -> Tensor:
    return logits.to(_compute_dtype(logits.dtype)).amax(dim=-1)


def _local_target(target: Tensor, vocab_start: int, vocab_local: int) -> tuple[Tensor, Tensor]:
    """(index into this rank's slice, clamped to it; whether the target is on this rank)."""
    local = target - vocab_start
    on_rank = (local >= 0) & (local < vocab_local)
    return local.clamp(0, vocab_local - 1), on_rank


def _target_minus_max(x: Tensor, target: Tensor, row_max: Tensor, vocab_start: int) -> Tensor:
    index, on_rank = _local_target(target, vocab_start, x.shape[-1])
    picked = x.gather(-1, index.unsqueeze(-1)).squeeze(-1)
    return torch.where(on_rank, picked - row_max, torch.zeros_like(picked))


def ce_sumexp_target(logits: Tensor, target: Tensor, row_max: Tensor, vocab_start: int) -> Tensor:
    """[2, rows]: sum_j exp(x_j - max) and x_target - max (0 when the target is off-rank)."""
    x = logits.to(_compute_dtype(logits.dtype))
    sum_exp = torch.exp(x - row_max.unsqueeze(-1)).sum(-1)
    return torch.stack((sum_exp, _target_minus_max(x, target, row_max, vocab_start)))


def ce_fwd_local(logits: Tensor, target: Tensor) -> Tensor:
    """[3, rows]: max, sum exp(x - max), x_target - max, for an unsplit vocabulary."""
    row_max = ce_row_max(logits)
    return torch.cat((row_max.unsqueeze(0), ce_sumexp_target(logits, target, row_max, 0)))


def ce_bwd(
    logits: Tensor,
    target: Tensor,
    row_max: Tensor,
    sum_exp: Tensor,
    grad: Tensor,
    vocab_start: int,
) -> Tensor:
    """grad * (softmax - onehot(target)) on this rank's vocab slice, in logits' dtype."""
    x = logits.to(_compute_dtype(logits.dtype))
    softmax = torch.exp(x - row_max.unsqueeze(-1)) / sum_exp.unsqueeze(-1)
    index, on_rank = _local_target(target, vocab_start, x.shape[-1])
    onehot = torch.zeros_like(softmax)
    onehot.scatter_(-1, index.unsqueeze(-1), on_rank.unsqueeze(-1).to(x.dtype))
    return ((softmax - onehot) * grad.to(x.dtype).unsqueeze(-1)).to(logits.dtype)


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Unreduced cross entropy over the full vocabulary (last dim), in the compute dtype."""
    x = logits.to(_compute_dtype(logits.dtype))
    return F.cross_entropy(x.reshape(-1, x.shape[-1]), target.reshape(-1), reduction="none").view(
        target.shape
    )
