"""The one place where megatron-core's CUDA assumptions are bridged for CPU (gloo) runs.

megatron-core 0.16.1 assumes a GPU in three ways (see DESIGN.md):

1. tensors created with ``device="cuda"`` / ``torch.cuda.current_device()`` (schedules, p2p
   communication, layers, optimizer), ``.cuda()`` calls and ``torch.cuda.synchronize()``;
2. the CUDA RNG tracker (``tensor_parallel/random.py``) reading and writing CUDA generator state;
3. type checks such as ``param.grad.type() == 'torch.cuda.FloatTensor'``.

`enable()` bridges them, and only when CUDA is unavailable: a `TorchFunctionMode` maps CUDA
devices to the CPU and reports CUDA type names for CPU tensors, and a handful of ``torch.cuda``
functions get CPU stand-ins. Activation recomputation re-runs forward code inside autograd's
backward, where the mode of the forward's thread does not apply: megatron-core's two
recomputation entry points enter the mode themselves. Each bridged point has a test in
tests/runtime/test_cpu_compat.py, so a megatron-core upgrade shows at once which assumption
changed.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

logger = logging.getLogger(__name__)

_CPU = torch.device("cpu")
_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
    "torch.DoubleTensor": "torch.cuda.DoubleTensor",
    "torch.IntTensor": "torch.cuda.IntTensor",
    "torch.LongTensor": "torch.cuda.LongTensor",
}

_state: dict[str, Any] = {"mode": None, "saved": {}}


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return False


class CudaToCpuMode(TorchFunctionMode):
    """Runs megatron-core's CUDA-flavoured tensor code on the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if device is not None and _is_cuda_device(device):
            kwargs = {**kwargs, "device": _CPU}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], _CPU, *args[2:])
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return _CUDA_TYPE_NAMES.get(name, name)
        return func(*args, **kwargs)


def _cpu_current_device() -> torch.device:
    return _CPU


def _cpu_get_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False):
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state: torch.Tensor, device: Any = -1, graph_safe: bool = False):
    torch.set_rng_state(new_state)


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def _under_cpu_mode(fn):
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any):
        with CudaToCpuMode():
            return fn(*args, **kwargs)
    return run


def _patches() -> list[tuple[Any, str, Any]]:
    from megatron.core.tensor_parallel import random as mcore_random

    checkpoint = mcore_random.CheckpointFunction
    without_output = mcore_random.CheckpointWithoutOutput
    return [
        (torch.cuda, "current_device", _cpu_current_device),
        (torch.cuda, "synchronize", _noop),
        (torch.cuda, "get_rng_state", _cpu_get_rng_state),
        (torch.cuda, "set_rng_state", _cpu_set_rng_state),
        # Megatron seeds the CUDA generator on top of the CPU one; on CPU they are the same.
        (torch.cuda, "manual_seed", lambda seed: torch.manual_seed(seed)),
        (mcore_random, "_get_cuda_rng_state", _cpu_get_rng_state),
        (mcore_random, "_set_cuda_rng_state", _cpu_set_rng_state),
        # Recomputation (selective or full) in backward: the causal mask, RNG states, ...
        (checkpoint, "backward", staticmethod(_under_cpu_mode(checkpoint.backward))),
        (without_output, "_recompute", _under_cpu_mode(without_output._recompute)),
    ]


def is_enabled() -> bool:
    return _state["mode"] is not None


def import_megatron_core() -> None:
    """Import megatron.core, on CPU with its JIT fuser off.

    When imported, megatron.core.jit sets ``jit_fuser = torch.compile`` and a dozen modules
    decorate their fused elementwise helpers with it, which imports TorchDynamo and Inductor:
    1.4 of the 4 seconds each rank spends importing megatron-core on these CPU machines
    (measured; every test launch pays it per rank). megastack turns those fusions off
    (`to_transformer_config`); of the decorated helpers only --cross-entropy-loss-fusion's
    run, and on CPU they then run eagerly, the same arithmetic. With a GPU nothing changes.
    """
    if torch.cuda.is_available() or "megatron.core" in sys.modules:
        return
    real_compile = torch.compile
    # megatron.core.jit reads torch.compile once, when it is imported (inside megatron.core's
    # __init__): every later `from megatron.core.jit import jit_fuser` gets the stand-in.
    torch.compile = _no_compile
    try:
        from megatron.core import jit

        jit.disable_jit_fuser()
    finally:
        torch.compile = real_compile


def _no_compile(model=None, **kwargs):
    return model if model is not None else (lambda fn: fn)


def enable() -> bool:
    """Bridge megatron-core to the CPU. A no-op (returns False) when CUDA is available."""
    if torch.cuda.is_available():
        return False
    if is_enabled():
        return True
    import_megatron_core()
    for owner, name, replacement in _patches():
        # From the class __dict__ where it is one, so a staticmethod is put back as it was.
        _state["saved"][(owner, name)] = vars(owner).get(name, getattr(owner, name))
        setattr(owner, name, replacement)
    mode = CudaToCpuMode()
    mode.__enter__()
    _state["mode"] = mode
    logger.info("CUDA not available: megatron-core runs on CPU through megastack's compat layer")
    return True


def disable() -> None:
    """Undo `enable()` (tests use this to check each bridged point in isolation)."""
    if not is_enabled():
        return
    _state["mode"].__exit__(None, None, None)
    _state["mode"] = None
    for (owner, name), original in _state["saved"].items():
        setattr(owner, name, original)
    _state["saved"].clear()
