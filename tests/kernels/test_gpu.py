"""Kernel vs reference parity (outputs and gradients, float32 and bfloat16) and a 20-step
training comparison. Needs a CUDA device and the built extension (benchmarks/kernels/
run_on_device.sh builds it); skipped without CUDA by tests/conftest.py."""

import os
import re
import socket

import pytest
import torch
import torch.nn.functional as F

from megastack.kernels import cuda_graph, functions, kernels_available, reference
from megastack.kernels._extension import extension

pytestmark = pytest.mark.gpu

# Tolerances against a float64 reference on the same (rounded) inputs.
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


@pytest.fixture(autouse=True)
def _need_extension():
    assert kernels_available(), "megastack._kernels is not importable: build it first"


def _close(got, want, dtype, scale=1.0):
    tol = {k: v * scale for k, v in TOL[dtype].items()}
    torch.testing.assert_close(got.double(), want.double(), **tol)


def _grads(fn, inputs, grad_out):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    torch.autograd.backward(outs, grad_out)
    return outs, [t.grad for t in inputs]


# ---- RMSNorm ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,wdtype", [(torch.float32, torch.float32),
                                          (torch.bfloat16, torch.bfloat16),
                                          (torch.bfloat16, torch.float32)])
# Register path: vector (4096, 1000, 8192) and scalar (37); 16384 takes the register path
# forward and the loop path backward (its rows stop at fewer threads); loop path both ways for
# longer rows: vector (40000) and scalar (20001).
@pytest.mark.parametrize("hidden", [4096, 1000, 37, 8192, 16384, 40000, 20001])
@pytest.mark.parametrize("residual", [False, True])
def test_rmsnorm_parity(dtype, wdtype, hidden, residual):
    torch.manual_seed(0)
    x = torch.randn(3, 67, hidden, device="cuda").to(dtype)
    r = torch.randn_like(x) if residual else None
    w = (torch.rand(hidden, device="cuda") + 0.5).to(wdtype)
    args = (x, w) + ((r,) if residual else ())

    def fused(x, w, *r):
        return functions.rms_norm(x, w, 1e-5, residual=r[0] if r else None)

    def ref(x, w, *r):
        return reference.rms_norm(x, w, 1e-5, residual=r[0] if r else None)

    assert functions._kernel_for(x, w) is not None
    gy = [torch.randn_like(x)] + ([torch.randn_like(x)] if residual else [])
    outs, grads = _grads(fused, args, gy)
    want_outs, want_grads = _grads(ref, [a.double() for a in args], [g.double() for g in gy])
    for o, wo in zip(outs, want_outs):
        assert o.dtype == dtype
        _close(o, wo, dtype)
    _close(grads[0], want_grads[0], dtype)
    # dweight sums over 201 rows: scale the tolerance with the row count's square root. The
    # input dtype sets it (bf16 inputs, and the bf16-rounded residual sum, limit the accuracy).
    _close(grads[1], want_grads[1], dtype, scale=15.0)
    if residual:
        _close(grads[2], want_grads[2], dtype)


def _bwd_kernel_names(step):
    """Names of the RMSNorm backward kernels `step` launches (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return {e.name for e in prof.events() if "rmsnorm_bwd" in e.name}


@pytest.fixture
def bwd_path():
    """Sets the extension's RMSNorm backward path for one test, then restores it."""
    ext = extension()
    before = ext.rmsnorm_bwd_path()
    yield ext.set_rmsnorm_bwd_path
    ext.set_rmsnorm_bwd_path(before)


@pytest.mark.parametrize("path", ["register", "staged-2", "staged-3", "staged-4"])
@pytest.mark.parametrize("dtype,wdtype", [(torch.float32, torch.float32),
                                          (torch.bfloat16, torch.bfloat16),
                                          (torch.bfloat16, torch.float32)])
@pytest.mark.parametrize("hidden", [4096, 1000, 8192])
@pytest.mark.parametrize("residual", [False, True])
def test_rmsnorm_backward_paths_over_many_rows(bwd_path, path, dtype, wdtype, hidden, residual):
    """Every backward kernel for register-path rows, with several rows per block (each block
    loops over rows: 4011 rows against at most a few hundred blocks), so the staged kernels'
    rings of shared-memory slots wrap around many times."""
    bwd_path(path)
    torch.manual_seed(0)
    x = torch.randn(3, 1337, hidden, device="cuda").to(dtype)
    r = torch.randn_like(x) if residual else None
    w = (torch.rand(hidden, device="cuda") + 0.5).to(wdtype)
    args = (x, w) + ((r,) if residual else ())
    gy = [torch.randn_like(x)] + ([torch.randn_like(x)] if residual else [])

    def fused(x, w, *r):
        return functions.rms_norm(x, w, 1e-5, residual=r[0] if r else None)

    def ref(x, w, *r):
        return reference.rms_norm(x, w, 1e-5, residual=r[0] if r else None)

    result = {}
    names = _bwd_kernel_names(lambda: result.update(got=_grads(fused, args, gy)))
    # fp32 rows of 8192 are past the register path (the loop kernel runs for every setting).
    # A staged kernel's last template argument is its slot count.
    if dtype == torch.float32 and hidden == 8192:
        expected = r"rmsnorm_bwd_kernel<"
    elif path == "register":
        expected = r"rmsnorm_bwd_reg_kernel<"
    else:
        expected = rf"rmsnorm_bwd_staged_kernel<[^>]*, {path[-1]}>"
    assert any(re.search(expected, n) for n in names), names
    outs, grads = result["got"]
    want_outs, want_grads = _grads(ref, [a.double() for a in args], [g.double() for g in gy])
    _close(grads[0], want_grads[0], dtype)
    # dweight sums 4011 rows: its error is measured against its largest entry (an elementwise
    # tolerance would have to be loose enough to hide a wrong row).
    dw_err = (grads[1].double() - want_grads[1]).abs().max() / want_grads[1].abs().max()
    assert dw_err < (1e-5 if dtype == torch.float32 else 1e-2), dw_err
    if residual:
        _close(grads[2], want_grads[2], dtype)


def test_rmsnorm_bwd_path_rejects_unknown_names(bwd_path):
    with pytest.raises(RuntimeError, match="'register', 'staged-2', 'staged-3' or 'staged-4'"):
        bwd_path("staged")
    for name in ("register", "staged-2", "staged-3", "staged-4"):
        bwd_path(name)
        assert extension().rmsnorm_bwd_path() == name


# ---- SwiGLU ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ffn,rows", [(11008, 132), (352, 132), (13, 132),
                                      (16, 70_001)])  # more rows than one grid's y extent
def test_swiglu_parity(dtype, ffn, rows):
    torch.manual_seed(0)
    x = (torch.randn(rows, 1, 2 * ffn, device="cuda") * 3).to(dtype)
    g = torch.randn(rows, 1, ffn, device="cuda").to(dtype)
    (y,), (dx,) = _grads(functions.swiglu, [x], [g])
    (wy,), (wdx,) = _grads(reference.swiglu, [x.double()], [g.double()])
    assert y.shape == (rows, 1, ffn) and y.dtype == dtype
    _close(y, wy, dtype)
    _close(dx, wdx, dtype)


# ---- RoPE ------------------------------------------------------------------------------------


def _freqs(s, rot, device="cuda"):
    inv = 1.0 / 10000 ** (torch.arange(0, rot, 2, dtype=torch.float32, device=device) / rot)
    f = torch.outer(torch.arange(s, dtype=torch.float32, device=device), inv)
    return torch.cat((f, f), dim=-1)[:, None, None, :]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rot", [128, 64])  # full and partial rotary (d = 128)
@pytest.mark.parametrize("strided", [False, True])
def test_rope_parity(dtype, rot, strided):
    torch.manual_seed(0)
    s, b, h, d = 4096, 2, 4, 128
    if strided:  # a query slice of a fused [s, b, groups, (q + k + v) * d] projection
        t = torch.randn(s, b, h, 3 * d, device="cuda").to(dtype)[..., d : 2 * d]
    else:
        t = torch.randn(s, b, h, d, device="cuda").to(dtype)
    freqs = _freqs(s, rot)
    g = torch.randn(s, b, h, d, device="cuda").to(dtype)
    for mscale in (1.0, 1.25):
        (y,), (dt,) = _grads(lambda t: functions.rope(t, freqs, mscale), [t], [g])
        (wy,), (wdt,) = _grads(lambda t: reference.rope(t, freqs.double(), mscale),
                               [t.double()], [g.double()])
        _close(y, wy, dtype)
        _close(dt, wdt, dtype)


# ---- cross entropy ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab", [32000, 1001])
def test_cross_entropy_parity(dtype, vocab):
    torch.manual_seed(0)
    logits = (torch.randn(2, 257, vocab, device="cuda") * 4).to(dtype)
    target = torch.randint(0, vocab, (2, 257), device="cuda")
    g = torch.rand(2, 257, device="cuda")
    (loss,), (dx,) = _grads(lambda x: functions.vocab_parallel_cross_entropy(x, target), [logits], [g])
    (wl,), (wdx,) = _grads(lambda x: reference.cross_entropy(x, target), [logits.double()], [g.double()])
    assert loss.dtype == torch.float32 and dx.dtype == dtype
    torch.testing.assert_close(loss.double(), wl, rtol=1e-4, atol=1e-4)
    _close(dx, wdx, dtype, scale=0.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_phases_across_vocab_shards(dtype):
    """The kernel phases on two vocab shards, combined as the TP all-reduces would (MAX, then
    SUM), give the full-vocabulary loss and gradient."""
    from megastack.kernels._extension import extension

    ext = extension()
    torch.manual_seed(0)
    rows, vocab = 300, 32000
    logits = (torch.randn(rows, vocab, device="cuda") * 4).to(dtype)
    target = torch.randint(0, vocab, (rows,), device="cuda")
    shards = [s.contiguous() for s in logits.chunk(2, dim=-1)]
    starts = [0, vocab // 2]
    gmax = torch.maximum(*[ext.ce_row_max(s) for s in shards])
    stats = sum(ext.ce_sumexp_target(s, target, gmax, st) for s, st in zip(shards, starts))
    loss = torch.log(stats[0]) - stats[1]
    want = reference.cross_entropy(logits.double(), target)
    torch.testing.assert_close(loss.double(), want, rtol=1e-4, atol=1e-4)
    grad = torch.rand(rows, device="cuda")
    dx = torch.cat([ext.ce_bwd(s, target, gmax, stats[0].contiguous(), grad, st)
                    for s, st in zip(shards, starts)], -1)
    x = logits.double().requires_grad_(True)
    (wdx,) = torch.autograd.grad(reference.cross_entropy(x, target), x, grad.double())
    _close(dx, wdx, dtype, scale=0.1)


# ---- CUDA graphs ------------------------------------------------------------------------------


def _graph_cases():
    """(name, op, input shapes, output-grad shapes) for each fused op at a small size."""
    target = torch.randint(0, 1001, (64,), device="cuda")
    freqs = _freqs(64, 128)
    return {
        "rmsnorm": (lambda x, w: functions.rms_norm(x, w, 1e-5), [(64, 4096), (4096,)],
                    [(64, 4096)]),
        "rmsnorm+residual": (lambda x, r, w: functions.rms_norm(x, w, 1e-5, residual=r),
                             [(64, 4096), (64, 4096), (4096,)], [(64, 4096), (64, 4096)]),
        "swiglu": (functions.swiglu, [(64, 2 * 352)], [(64, 352)]),
        "rope": (lambda t: functions.rope(t, freqs), [(64, 1, 4, 128)], [(64, 1, 4, 128)]),
        "cross_entropy": (lambda x: functions.vocab_parallel_cross_entropy(x, target),
                          [(64, 1001)], [(64,)]),
    }


@pytest.mark.parametrize("path", ["register", "staged-3"])
@pytest.mark.parametrize("name", ["rmsnorm", "rmsnorm+residual", "swiglu", "rope",
                                  "cross_entropy"])
def test_fused_ops_replay_in_a_cuda_graph(bwd_path, path, name):
    """Forward + backward captured in a CUDA graph and replayed on new inputs gives what the
    ops give run directly: every launch is on the current stream and none syncs the host (the
    benchmark's graph column and CUDA-graphed training rely on it)."""
    bwd_path(path)
    op, in_shapes, out_shapes = _graph_cases()[name]
    dtype = torch.bfloat16
    torch.manual_seed(0)
    static_in = [torch.randn(s, device="cuda").to(dtype).requires_grad_(True) for s in in_shapes]
    static_grad = [torch.randn(s, device="cuda") for s in out_shapes]
    if name != "cross_entropy":
        static_grad = [g.to(dtype) for g in static_grad]

    def step():
        out = op(*static_in)
        outs = out if isinstance(out, tuple) else (out,)
        return list(outs) + list(torch.autograd.grad(outs, static_in, static_grad))

    graph, static_out = cuda_graph.capture(step)

    for seed in (1, 2):  # replays must follow the new inputs, not the captured ones
        torch.manual_seed(seed)
        with torch.no_grad():
            for t in static_in + static_grad:
                t.copy_(torch.randn(t.shape, device="cuda").to(t.dtype))
        graph.replay()
        want = step()
        assert len(static_out) == len(want)
        for got, ref in zip(static_out, want):
            _close(got, ref, dtype if got.dtype == dtype else torch.float32)


# ---- training: kernels vs reference ----------------------------------------------------------


class TinyLM(torch.nn.Module):
    """A Llama-style stack written against an op table, so the same weights can train with the
    kernels or with the references."""

    def __init__(self, ops, vocab=512, hidden=256, heads=4, ffn=704, layers=2):
        super().__init__()
        self.ops, self.heads = ops, heads
        self.emb = torch.nn.Embedding(vocab, hidden)
        self.blocks = torch.nn.ModuleList()
        for _ in range(layers):
            blk = torch.nn.Module()
            blk.n1 = torch.nn.Parameter(torch.ones(hidden))
            blk.n2 = torch.nn.Parameter(torch.ones(hidden))
            blk.qkv = torch.nn.Linear(hidden, 3 * hidden, bias=False)
            blk.proj = torch.nn.Linear(hidden, hidden, bias=False)
            blk.fc1 = torch.nn.Linear(hidden, 2 * ffn, bias=False)
            blk.fc2 = torch.nn.Linear(ffn, hidden, bias=False)
            self.blocks.append(blk)
        self.norm = torch.nn.Parameter(torch.ones(hidden))
        self.out = torch.nn.Linear(hidden, vocab, bias=False)

    def forward(self, tokens, targets):  # tokens [s, b]
        ops = self.ops
        s, b = tokens.shape
        # bf16 residual stream, as in bf16 training, so the norms take the fused residual path.
        x = self.emb(tokens).to(torch.bfloat16 if tokens.is_cuda else torch.float32)
        hd = x.shape[-1] // self.heads
        freqs = _freqs(s, hd, device=tokens.device)
        residual = None
        for blk in self.blocks:
            if residual is None:
                h, residual = ops["rms_norm"](x, blk.n1, 1e-5), x
            else:
                h, residual = ops["rms_norm"](x, blk.n1, 1e-5, residual=residual)
            q, k, v = blk.qkv(h).view(s, b, self.heads, 3 * hd).split(hd, dim=-1)
            q, k = ops["rope"](q, freqs), ops["rope"](k, freqs)
            a = F.scaled_dot_product_attention(*(t.permute(1, 2, 0, 3) for t in (q, k, v)),
                                               is_causal=True)
            x = blk.proj(a.permute(2, 0, 1, 3).reshape(s, b, -1))
            h, residual = ops["rms_norm"](x, blk.n2, 1e-5, residual=residual)
            x = blk.fc2(ops["swiglu"](blk.fc1(h)))
        h = ops["rms_norm"](x + residual, self.norm, 1e-5)
        return ops["ce"](self.out(h), targets).mean()


KERNEL_OPS = dict(rms_norm=functions.rms_norm, rope=functions.rope, swiglu=functions.swiglu,
                  ce=functions.vocab_parallel_cross_entropy)
REFERENCE_OPS = dict(rms_norm=reference.rms_norm, rope=reference.rope, swiglu=reference.swiglu,
                     ce=reference.cross_entropy)


def _train(ops, state, batches, device="cuda"):
    torch.manual_seed(0)
    model = TinyLM(ops).to(device)
    model.load_state_dict(state)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for tokens, targets in batches:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(tokens, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_training_20_steps_kernels_match_reference():
    torch.manual_seed(0)
    state = {k: v.clone() for k, v in TinyLM(REFERENCE_OPS).state_dict().items()}
    # A learnable stream: each sequence counts upward from a random start.
    batches = []
    for _ in range(20):
        start = torch.randint(0, 400, (1, 8))
        seq = (start + torch.arange(129).unsqueeze(1)) % 512
        batches.append((seq[:-1].cuda(), seq[1:].cuda()))
    fused = _train(KERNEL_OPS, state, batches)
    ref = _train(REFERENCE_OPS, state, batches)
    assert fused[-1] < fused[0] - 1.0, f"kernel run did not learn: {fused}"
    for step, (a, b) in enumerate(zip(fused, ref)):
        assert abs(a - b) <= 0.1 + 0.05 * abs(b), f"step {step}: kernels {a} vs reference {b}"


def test_megatron_fused_spec_matches_local_spec_on_gpu():
    """The same GPTModel weights with the local and the fused spec: forward loss and gradients
    agree on the GPU, where the fused spec runs the kernels."""
    pytest.importorskip("megatron.core")
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    from megastack.config import ModelConfig, to_transformer_config
    from megastack.kernels.spec import get_gpt_layer_fused_spec

    created = not dist.is_initialized()
    if created:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(port)
        dist.init_process_group("nccl", rank=0, world_size=1)
    parallel_state.initialize_model_parallel()
    model_parallel_cuda_manual_seed(0)
    try:
        model = ModelConfig.from_name("mini-2l128h")
        config = to_transformer_config(model)

        def build(spec):
            torch.manual_seed(0)
            return GPTModel(config, spec, vocab_size=model.vocab_size,
                            max_sequence_length=model.seq_length,
                            position_embedding_type="rope").cuda()

        local = build(get_gpt_layer_local_spec(normalization="RMSNorm"))
        fused = build(get_gpt_layer_fused_spec())
        fused.load_state_dict(local.state_dict())
        tokens = torch.randint(0, model.vocab_size, (2, 128), device="cuda")
        pos = torch.arange(128, device="cuda").unsqueeze(0).expand(2, -1)
        labels = torch.randint(0, model.vocab_size, (2, 128), device="cuda")
        la = local(tokens, pos, None, labels=labels)
        lb = fused(tokens, pos, None, labels=labels)
        torch.testing.assert_close(lb, la, rtol=1e-4, atol=1e-4)
        la.mean().backward()
        lb.mean().backward()
        ref = dict(local.named_parameters())
        for name, p in fused.named_parameters():
            torch.testing.assert_close(p.grad, ref[name].grad, rtol=1e-3, atol=1e-5, msg=name)
    finally:
        parallel_state.destroy_model_parallel()
        if created:
            dist.destroy_process_group()
