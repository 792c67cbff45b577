import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config, items):
    import torch

    no_gpu = pytest.mark.skip(reason="needs a CUDA device (run on a GPU machine)")
    no_nvcc = pytest.mark.skip(reason="needs nvcc on PATH")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if "nvcc" in item.keywords and shutil.which("nvcc") is None:
            item.add_marker(no_nvcc)


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def megatron_world():
    """One gloo process with megatron-core's parallel state at TP=1, PP=1 (CPU bridge on when
    there is no GPU), shared by every in-process model test."""
    from megastack.config import ParallelConfig
    from megastack.runtime import initialize

    return initialize(ParallelConfig(), num_layers=2, seed=0)
