"""Every csrc/*.cu compiles for sm_80 and sm_90 with the flags torch extensions use (the
command comes from benchmarks/kernels/ptxas_registers.py).

The .cu files include no torch headers (kernels.h explains why), so each compile takes seconds.
"""

import os
import subprocess
from pathlib import Path

import pytest

from tests.scripts import load_script

CSRC = Path(__file__).resolve().parents[2] / "csrc"
CU_FILES = sorted(CSRC.glob("*.cu"))


@pytest.fixture(scope="module")
def ptxas_registers():
    """The script that owns the nvcc command (the one torch.utils.cpp_extension would run)."""
    return load_script("benchmarks/kernels/ptxas_registers.py")


def test_there_are_kernels_to_compile():
    names = {p.name for p in CU_FILES}
    assert {"rmsnorm.cu", "swiglu.cu", "rope.cu", "cross_entropy.cu"} <= names


@pytest.mark.nvcc
@pytest.mark.parametrize("cu", CU_FILES, ids=lambda p: p.name)
def test_cu_compiles_for_sm80_and_sm90(cu, tmp_path, ptxas_registers):
    # One invocation per file with a -gencode per architecture: the device code is compiled
    # for each (as -arch=sm_80 and -arch=sm_90 would), the host code once; --threads compiles
    # the two architectures side by side.
    out = tmp_path / (cu.stem + ".o")
    cmd = ptxas_registers.torch_nvcc_command(cu, out, ["80", "90"]) + ["-Werror=all-warnings",
                                                                       "--threads", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=os.environ)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    assert out.stat().st_size > 0


def test_ptxas_log_is_parsed_per_kernel(ptxas_registers):
    log = """ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90'
ptxas info    : Function properties for _Z3fooPf
    16 bytes stack frame, 16 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 64 registers, used 1 barriers, 400 bytes cmem[0]
ptxas info    : Compiling entry function '_Z3barv' for 'sm_90'
ptxas info    : Function properties for _Z3barv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, 352 bytes cmem[0]
"""
    assert ptxas_registers.parse_ptxas(log) == [("_Z3fooPf", "sm_90", 64, 16),
                                                ("_Z3barv", "sm_90", 12, 0)]
