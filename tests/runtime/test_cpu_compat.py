"""One test per CUDA assumption of megatron-core that megastack.runtime.cpu_compat bridges.

Each test first shows megatron-core's code still makes the assumption (so an upgrade that drops
it is noticed), then that it runs on CPU with the bridge on.
"""

import inspect

import pytest
import torch

from megastack.runtime import cpu_compat

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the bridge is CPU-only")


@pytest.fixture
def bridge():
    was_enabled = cpu_compat.is_enabled()
    cpu_compat.enable()
    yield
    if not was_enabled:
        cpu_compat.disable()


def _source(module) -> str:
    return inspect.getsource(module)


def test_enable_is_a_noop_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cpu_compat.enable() is False


# 1. tensors created on "cuda" / torch.cuda.current_device(), .cuda(), synchronize ------------
def test_megatron_still_creates_cuda_tensors():
    from megatron.core.pipeline_parallel import p2p_communication, schedules

    assert 'device="cuda"' in _source(schedules)
    assert "torch.cuda.current_device()" in _source(p2p_communication)
    assert "torch.cuda.synchronize()" in _source(p2p_communication)


def test_cuda_device_tensors_land_on_cpu(bridge):
    assert torch.zeros(3, device="cuda").device.type == "cpu"
    assert torch.empty(2, device=torch.device("cuda", 0)).device.type == "cpu"
    assert torch.ones(2, device=torch.cuda.current_device()).device.type == "cpu"
    t = torch.arange(4)
    assert t.cuda() is t
    assert t.to("cuda").device.type == "cpu"
    torch.cuda.synchronize()  # no-op instead of "Torch not compiled with CUDA enabled"


def test_schedule_token_counter_runs(bridge):
    # schedules.py: total_num_tokens = torch.zeros([], dtype=torch.int, device="cuda")
    total = torch.zeros([], dtype=torch.int, device="cuda")
    total += torch.tensor(5, dtype=torch.int)
    assert int(total) == 5


# 2. the CUDA RNG tracker -------------------------------------------------------------------
def test_megatron_rng_tracker_still_uses_cuda_state():
    from megatron.core.tensor_parallel import random as mcore_random

    src = _source(mcore_random)
    assert "torch.cuda.get_rng_state" in src and "_set_cuda_rng_state" in src


def test_rng_tracker_forks_reproducibly(bridge):
    from megatron.core.tensor_parallel import get_cuda_rng_tracker
    from megatron.core.tensor_parallel.random import initialize_rng_tracker

    initialize_rng_tracker(force_reset=True)
    tracker = get_cuda_rng_tracker()
    tracker.reset()
    torch.manual_seed(0)
    tracker.add("model-parallel-rng", 123)
    outside_before = torch.get_rng_state()
    with tracker.fork("model-parallel-rng"):
        a = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), outside_before), "fork must restore the outer state"
    tracker.reset()
    tracker.add("model-parallel-rng", 123)
    with tracker.fork("model-parallel-rng"):
        b = torch.rand(4)
    assert torch.equal(a, b)
    with tracker.fork("model-parallel-rng"):
        c = torch.rand(4)
    assert not torch.equal(b, c), "the forked stream must advance"


def test_cuda_rng_state_round_trip(bridge):
    state = torch.cuda.get_rng_state()
    x = torch.rand(3)
    torch.cuda.set_rng_state(state)
    assert torch.equal(torch.rand(3), x)


# 3. type checks against 'torch.cuda.FloatTensor' -------------------------------------------
def test_megatron_still_checks_cuda_type_names():
    from megatron.core.optimizer import clip_grads

    assert "torch.cuda.FloatTensor" in _source(clip_grads)


def test_cpu_tensors_report_cuda_type_names(bridge):
    assert torch.zeros(1).type() == "torch.cuda.FloatTensor"
    assert torch.zeros(1, dtype=torch.bfloat16).type() == "torch.cuda.BFloat16Tensor"
    assert torch.zeros(1).type(torch.float64).dtype == torch.float64  # conversion still works


def test_clip_grads_accepts_cpu_grads(bridge):
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), 2.0)
    clip_grad_by_total_norm_fp32([p], max_norm=1.0, total_norm=4.0)
    assert torch.allclose(p.grad, torch.full((4,), 0.5), atol=1e-6)


# 4. activation recomputation: forward code re-run inside autograd's backward -----------------
def test_megatron_still_builds_the_causal_mask_on_cuda():
    from megatron.core.transformer import utils

    assert 'device="cuda"' in inspect.getsource(utils.get_default_causal_mask)


@pytest.mark.parametrize("entry", ["checkpoint", "checkpoint_without_output"])
def test_recomputation_in_backward_runs_on_cpu(bridge, entry):
    """Backward ran outside the bridge's mode: the recomputed forward's CUDA tensors failed
    ("Torch not compiled with CUDA enabled"), so selective and full recomputation crashed."""
    from megatron.core import tensor_parallel

    def forward(t):
        return t * torch.full((3,), 2.0, device="cuda")

    x = torch.ones(3, requires_grad=True)
    if entry == "checkpoint":
        y = tensor_parallel.checkpoint(forward, False, x)
    else:
        # megatron-core 0.16.1's CheckpointWithoutOutput takes any fp8 argument, False too, as
        # FP8 (Transformer Engine) on: None is the only off.
        recompute = tensor_parallel.CheckpointWithoutOutput(fp8=None)
        y = recompute.checkpoint(forward, x)
        z = y * 3
        recompute.discard_output_and_register_recompute(z)
        y = z
    y.sum().backward()
    assert torch.equal(x.grad, torch.full((3,), 2.0 if entry == "checkpoint" else 6.0))


def test_disable_restores_torch(bridge):
    cpu_compat.disable()
    try:
        assert torch.zeros(1).type() == "torch.FloatTensor"
        with pytest.raises((AssertionError, RuntimeError)):
            torch.zeros(1, device="cuda")
    finally:
        cpu_compat.enable()


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU megatron-core's JIT stays on")
def test_megatron_core_imports_without_its_torch_compile_jit():
    """A fresh process (as every rank is): megatron-core's fused helpers are plain functions,
    TorchDynamo is not imported by the import, and torch.compile is torch's again."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from megastack.runtime import cpu_compat\n"
        "real = torch.compile\n"
        "cpu_compat.import_megatron_core()\n"
        "from megatron.core import jit\n"
        "from megatron.core.fusions import fused_bias_swiglu, fused_cross_entropy\n"
        "assert jit.jit_fuser is jit.noop_decorator, jit.jit_fuser\n"
        "for helper in (fused_cross_entropy.calculate_logits_max, fused_bias_swiglu.swiglu):\n"
        "    assert not hasattr(helper, '_torchdynamo_orig_callable'), helper\n"
        "assert 'torch._dynamo' not in sys.modules\n"
        "assert torch.compile is real\n"
    )
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
