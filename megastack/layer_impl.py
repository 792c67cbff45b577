"""Which transformer-layer implementation a run uses, decided without importing torch (the
planner, tools/plan.py, runs where only the configuration matters).

- ``transformer_engine``: megatron-core's TE spec, when Transformer Engine imports and CUDA is up;
- ``fused``: megatron-core's local spec with megastack's fused CUDA kernels (csrc/);
- ``local``: megatron-core's local (pure PyTorch) spec; the CPU path.
"""

from __future__ import annotations

LAYER_IMPLS = ("auto", "local", "transformer_engine", "fused")


def transformer_engine_available() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:
        return False
    import torch

    return torch.cuda.is_available()


def resolve_transformer_impl(impl: str = "auto") -> str:
    """The implementation `impl` stands for here: "auto" is Transformer Engine when usable."""
    if impl not in LAYER_IMPLS:
        raise ValueError(f"--transformer-impl must be one of {LAYER_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "transformer_engine" if transformer_engine_available() else "local"
    return impl


def check_sequence_parallel(impl: str, tensor_model_parallel_size: int, sequence_parallel: bool,
                            tp_flag: str = "--tensor-model-parallel-size") -> None:
    """Sequence parallelism needs norms that reduce their weight gradients over TP. Without
    Transformer Engine megatron-core builds torch norms (the local spec, and the final norm of
    the fused spec), which assert on it once the model is built; say so before that."""
    if not sequence_parallel or tensor_model_parallel_size <= 1:
        return
    resolved = resolve_transformer_impl(impl)
    if resolved != "transformer_engine":
        how = "auto resolves to local: Transformer Engine or CUDA is not available" \
            if impl == "auto" else f"--transformer-impl {impl}"
        raise ValueError(
            f"--sequence-parallel with {tp_flag} {tensor_model_parallel_size} "
            f"needs --transformer-impl transformer_engine ({how}; megatron-core's torch norms do "
            f"not support sequence parallelism): drop --sequence-parallel or use "
            f"--transformer-impl transformer_engine with Transformer Engine installed")
