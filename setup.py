"""megastack: Megatron-core GPT pre-training built around model growth.

`pip install -e .` installs the Python package. The fused CUDA kernels in csrc/ are built as a
PyTorch extension when CUDA (nvcc and a CUDA build of torch) is present; set
MEGASTACK_SKIP_KERNELS=1 to skip them. Without them the PyTorch reference path runs.
"""

import os

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "megatron-core==0.16.1",
    "torch>=2.6,<=2.14.1",  # CPU machines: torch==2.13.0 from the local wheel
    "numpy>=1.26,<3",
    "sentencepiece==0.2.3",
    "tokenizers>=0.20,<0.24",
    "nltk==3.10.4",
    "tensorboard==2.21.0",
    "psutil==7.2.2",  # dist_checkpointing's forked writers need it (they hang without)
    "tqdm==4.70.1",
    "safetensors==0.8.0",  # tools/export_hf.py and tools/import_hf.py
]

EXTRAS = {
    # transformers: the HF conversion tests compare LlamaForCausalLM's logits with megastack's.
    "test": ["pytest==9.2.0", "hypothesis>=6.150,<7", "transformers==5.24.0"],
    "plot": ["matplotlib==3.11.2"],
    # Both need CUDA; megastack uses them when importable.
    "te": ["transformer-engine[pytorch]"],
    "apex": ["apex"],
}


def _kernel_extensions():
    if os.environ.get("MEGASTACK_SKIP_KERNELS") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        return [], {}
    if CUDA_HOME is None or not torch.version.cuda:
        return [], {}
    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(
        os.path.join("csrc", f) for f in os.listdir(os.path.join(here, "csrc"))
        if f.endswith((".cu", ".cpp"))
    )
    if not sources:
        return [], {}
    ext = CUDAExtension(
        name="megastack._kernels",
        sources=sources,
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _kernel_extensions()

setup(
    name="megastack",
    version="0.1.0",
    description="Megatron-core GPT pre-training with model growth (G_stack)",
    packages=find_packages(include=["megastack", "megastack.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
