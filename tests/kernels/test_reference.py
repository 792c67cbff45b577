"""The PyTorch references (the CPU path, and the oracle for the kernels) against independent
math: torch's own ops, megatron-core's unfused code, and autograd via gradcheck in float64."""

import logging

import pytest
import torch
import torch.nn.functional as F

from megastack.kernels import _extension, functions, reference


def _f64(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)


# ---- RMSNorm ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_torch(dtype):
    x = torch.randn(6, 5, 32).to(dtype)
    w = torch.rand(32) + 0.5
    want = F.rms_norm(x.float(), (32,), w, eps=1e-5).to(dtype)
    torch.testing.assert_close(reference.rms_norm(x, w, 1e-5), want)


def test_rms_norm_residual_returns_sum_and_norm_of_sum():
    x, r, w = torch.randn(4, 16), torch.randn(4, 16), torch.rand(16)
    y, s = reference.rms_norm(x, w, 1e-6, residual=r)
    torch.testing.assert_close(s, x + r)
    torch.testing.assert_close(y, reference.rms_norm(x + r, w, 1e-6))


def test_rms_norm_gradcheck():
    x, r, w = _f64(3, 8), _f64(3, 8, seed=1), _f64(8, seed=2)
    assert torch.autograd.gradcheck(lambda x, w: reference.rms_norm(x, w, 1e-5), (x, w))
    # Both outputs of the fused residual form carry gradient.
    assert torch.autograd.gradcheck(
        lambda x, r, w: reference.rms_norm(x, w, 1e-5, residual=r), (x, r, w)
    )


def test_rms_norm_hand_derived_backward():
    """The closed form the CUDA backward implements: dx = rstd * (g*w - xhat * mean(g*w*xhat))."""
    x, w, g = _f64(5, 12), _f64(12, seed=1), torch.randn(5, 12, dtype=torch.float64)
    y = reference.rms_norm(x, w, 1e-5)
    dx, dw = torch.autograd.grad(y, (x, w), g)
    xd = x.detach()
    rstd = torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-5)
    xhat = xd * rstd
    gw = g * w.detach()
    torch.testing.assert_close(dx, rstd * (gw - xhat * (gw * xhat).mean(-1, keepdim=True)))
    torch.testing.assert_close(dw, (g * xhat).sum(0))


# ---- SwiGLU ----------------------------------------------------------------------------------


def test_swiglu_is_silu_gate_times_up():
    x = torch.randn(3, 4, 2 * 10)
    gate, up = x[..., :10], x[..., 10:]
    torch.testing.assert_close(reference.swiglu(x), gate * torch.sigmoid(gate) * up)


def test_swiglu_gradcheck_and_hand_derived_backward():
    x = _f64(4, 2 * 6)
    assert torch.autograd.gradcheck(reference.swiglu, (x,))
    g = torch.randn(4, 6, dtype=torch.float64)
    (dx,) = torch.autograd.grad(reference.swiglu(x), x, g)
    gate, up = x.detach()[:, :6], x.detach()[:, 6:]
    s = torch.sigmoid(gate)
    torch.testing.assert_close(dx[:, :6], g * up * s * (1 + gate * (1 - s)))
    torch.testing.assert_close(dx[:, 6:], g * gate * s)


def test_swiglu_rejects_odd_width():
    with pytest.raises(ValueError, match="even"):
        functions.swiglu(torch.randn(2, 7))


# ---- RoPE ------------------------------------------------------------------------------------


def _freqs(s, rot, base=10000.0):
    inv = 1.0 / base ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot)
    f = torch.outer(torch.arange(s, dtype=torch.float32), inv)
    return torch.cat((f, f), dim=-1)[:, None, None, :]  # megatron-core's [s, 1, 1, rot]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rot", [16, 8])  # 8 < d = 16: partial rotary
def test_rope_equals_megatron_core(dtype, rot):
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

    t = torch.randn(7, 2, 3, 16).to(dtype)
    freqs = _freqs(7, rot)
    want = _apply_rotary_pos_emb_bshd(t, freqs, rotary_interleaved=False)
    assert torch.equal(reference.rope(t, freqs), want)
    assert torch.equal(functions.rope(t, freqs), want)  # CPU: the reference path


def test_rope_gradcheck_and_transpose_backward():
    t = _f64(5, 2, 2, 8)
    freqs = _freqs(5, 6).double()
    assert torch.autograd.gradcheck(lambda t: reference.rope(t, freqs), (t,))
    # The CUDA backward applies the transpose rotation: that is rope with sin negated.
    g = torch.randn(5, 2, 2, 8, dtype=torch.float64)
    (dt,) = torch.autograd.grad(reference.rope(t, freqs), t, g)
    half = 3
    c, s = torch.cos(freqs), torch.sin(freqs)
    want = g.clone()
    want[..., :half] = g[..., :half] * c[..., :half] + g[..., half:6] * s[..., half:6]
    want[..., half:6] = g[..., half:6] * c[..., half:6] - g[..., :half] * s[..., :half]
    torch.testing.assert_close(dt, want)


# ---- cross entropy ---------------------------------------------------------------------------


def test_cross_entropy_matches_torch_and_megatron_semantics():
    logits = torch.randn(3, 4, 50)
    target = torch.randint(0, 50, (3, 4))
    loss = functions.vocab_parallel_cross_entropy(logits, target)
    assert loss.shape == (3, 4) and loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 50), target.reshape(-1), reduction="none").view(3, 4))
    torch.testing.assert_close(loss, reference.cross_entropy(logits, target))


def test_cross_entropy_gradcheck_through_phase_backward():
    """gradcheck the autograd function whose backward is ce_bwd (softmax - onehot) * grad."""
    logits = _f64(6, 11)
    target = torch.randint(0, 11, (6,))
    assert torch.autograd.gradcheck(
        lambda x: functions.vocab_parallel_cross_entropy(x, target), (logits,)
    )


def test_cross_entropy_phases_combine_across_vocab_shards():
    """Two simulated ranks: MAX then SUM of the per-shard phases gives the full-vocab loss, and
    the per-shard backward slices concatenate to the full gradient."""
    rows, vocab = 9, 40
    logits = torch.randn(rows, vocab, dtype=torch.float64)
    target = torch.randint(0, vocab, (rows,))
    shards = logits.chunk(2, dim=-1)
    starts = [0, vocab // 2]
    gmax = torch.maximum(*[reference.ce_row_max(s) for s in shards])
    stats = sum(reference.ce_sumexp_target(s, target, gmax, st) for s, st in zip(shards, starts))
    loss = torch.log(stats[0]) - stats[1]
    torch.testing.assert_close(loss, reference.cross_entropy(logits, target))

    grad = torch.rand(rows, dtype=torch.float64)
    x = logits.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(reference.cross_entropy(x, target), x, grad)
    got = torch.cat(
        [reference.ce_bwd(s, target, gmax, stats[0], grad, st) for s, st in zip(shards, starts)], -1
    )
    torch.testing.assert_close(got, want)


def test_cross_entropy_does_not_modify_logits():
    logits = torch.randn(4, 10)
    before = logits.clone()
    functions.vocab_parallel_cross_entropy(logits, torch.randint(0, 10, (4,)))
    assert torch.equal(logits, before)


def test_cross_entropy_rejects_mismatched_target():
    with pytest.raises(ValueError, match="disagree"):
        functions.vocab_parallel_cross_entropy(torch.randn(4, 10), torch.zeros(5, dtype=torch.long))


# ---- path selection --------------------------------------------------------------------------


def test_path_is_logged_once(caplog, monkeypatch):
    _extension._resolve.cache_clear()
    _extension._announce.cache_clear()
    with caplog.at_level(logging.INFO, logger="megastack.kernels"):
        first = _extension.kernels_available()
        functions.swiglu(torch.randn(2, 4))
        assert _extension.kernels_available() == first
    lines = [r.getMessage() for r in caplog.records if r.name == "megastack.kernels"]
    assert len(lines) == 1
    expected = "fused CUDA kernels" if first else "PyTorch reference"
    assert expected in lines[0]


def test_skip_env_forces_reference(monkeypatch):
    monkeypatch.setenv("MEGASTACK_SKIP_KERNELS", "1")
    _extension._resolve.cache_clear()
    _extension._announce.cache_clear()
    try:
        assert not _extension.kernels_available()
    finally:
        monkeypatch.delenv("MEGASTACK_SKIP_KERNELS")
        _extension._resolve.cache_clear()
        _extension._announce.cache_clear()
