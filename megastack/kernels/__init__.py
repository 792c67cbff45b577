"""Fused CUDA kernels (csrc/) and their PyTorch references.

- `functions`: autograd functions that call the extension for CUDA tensors, else the reference.
- `reference`: the plain-PyTorch definition of every op (and of each cross-entropy phase).
- `modules`: drop-in replacements for megatron-core's local-spec modules.
- `spec`: `get_gpt_layer_fused_spec`, the third layer spec beside local and Transformer Engine.
- `cuda_graph`: `capture`, a step captured in a CUDA graph (the benchmark and GPU tests).

Which path runs is logged once ("fused CUDA kernels" or "PyTorch reference").
"""

from megastack.kernels._extension import kernels_available
from megastack.kernels.functions import rms_norm, rope, swiglu, vocab_parallel_cross_entropy

__all__ = [
    "kernels_available",
    "rms_norm",
    "rope",
    "swiglu",
    "vocab_parallel_cross_entropy",
]
