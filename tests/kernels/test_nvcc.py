"""Every csrc/*.cu compiles for sm_80 and sm_90 with the flags torch extensions use.

The .cu files include no torch headers (kernels.h explains why), so each compile takes seconds.
"""

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

CSRC = Path(__file__).resolve().parents[2] / "csrc"
CU_FILES = sorted(CSRC.glob("*.cu"))

# What torch.utils.cpp_extension passes to nvcc: its COMMON_NVCC_FLAGS (among them
# -D__CUDA_NO_BFLOAT16_CONVERSIONS__, which forbids implicit bf16 <-> float conversions), plus
# setup.py's options and the extension defines.
TORCH_NVCC_FLAGS = [
    "-std=c++17",
    "-O3",
    "--use_fast_math",
    "-Xcompiler",
    "-fPIC",
    *COMMON_NVCC_FLAGS,
    "-DTORCH_EXTENSION_NAME=_kernels",
    "-DTORCH_API_INCLUDE_EXTENSION_H",
]


def _include_flags():
    from torch.utils.cpp_extension import include_paths

    return [f"-I{p}" for p in include_paths() + [sysconfig.get_paths()["include"], str(CSRC)]]


def test_there_are_kernels_to_compile():
    names = {p.name for p in CU_FILES}
    assert {"rmsnorm.cu", "swiglu.cu", "rope.cu", "cross_entropy.cu"} <= names


@pytest.mark.nvcc
@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: p.name)
def test_cu_compiles_for_sm80_and_sm90(cu, tmp_path):
    nvcc = shutil.which("nvcc")
    # One invocation per file with a -gencode per architecture: the device code is compiled
    # for each (as -arch=sm_80 and -arch=sm_90 would), the host code once.
    cmd = [
        nvcc,
        "-c",
        str(cu),
        "-o",
        str(tmp_path / (cu.stem + ".o")),
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90,code=sm_90",
        "-Werror=all-warnings",
        *TORCH_NVCC_FLAGS,
        *_include_flags(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=os.environ)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / (cu.stem + ".o")).stat().st_size > 0
