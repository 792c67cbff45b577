"""Registers and spills per kernel, from ptxas, for a csrc/*.cu file: no GPU needed.

Compiles with the flags torch.utils.cpp_extension passes to nvcc (the same command
tests/kernels/test_nvcc.py runs in CI) plus `-Xptxas -v`, and prints one line per kernel
instance (demangled when cu++filt or c++filt is on PATH). Registers bound how many blocks fit
on an SM, so this is how a kernel change is checked for occupancy before a GPU run.

    python3 benchmarks/kernels/ptxas_registers.py csrc/rmsnorm.cu --arch 90 --match rmsnorm_bwd \\
        --out benchmarks/kernels/results/ptxas_rmsnorm_bwd_sm90.txt
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

CSRC = Path(__file__).resolve().parents[2] / "csrc"


def torch_nvcc_command(cu: Path, out: Path, archs: list[str]) -> list[str]:
    """nvcc compiling `cu` to `out` for each sm_XX in `archs`, with what
    torch.utils.cpp_extension passes (its COMMON_NVCC_FLAGS, among them
    -D__CUDA_NO_BFLOAT16_CONVERSIONS__, which forbids implicit bf16 <-> float conversions),
    setup.py's options and the extension defines."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise SystemExit("nvcc is not on PATH")
    includes = include_paths() + [sysconfig.get_paths()["include"], str(CSRC)]
    return [
        nvcc, "-c", str(cu), "-o", str(out),
        *[f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs],
        "-std=c++17", "-O3", "--use_fast_math", "-Xcompiler", "-fPIC", *COMMON_NVCC_FLAGS,
        "-DTORCH_EXTENSION_NAME=_kernels", "-DTORCH_API_INCLUDE_EXTENSION_H",
        *[f"-I{p}" for p in includes],
    ]


_FUNCTION = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+a?)'")
_USAGE = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas(log: str) -> list[tuple[str, str, int, int]]:
    """(mangled kernel, arch, registers, spill-store bytes) for each entry function."""
    rows, current, spill = [], None, 0
    for line in log.splitlines():
        if m := _FUNCTION.search(line):
            current, spill = (m.group(1), m.group(2)), 0
        elif current and (m := _SPILLS.search(line)):
            spill = int(m.group(1))
        elif current and (m := _USAGE.search(line)):
            rows.append((*current, int(m.group(1)), spill))
            current = None
    return rows


def demangle(names: list[str]) -> list[str]:
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if tool is None or not names:
        return names
    proc = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True)
    out = proc.stdout.splitlines()
    if proc.returncode != 0 or len(out) != len(names):
        return names
    # Drop the namespaces and the parameter list: the template arguments name the instance.
    return [re.sub(r"^.*::(?=\w+<)|\(.*\)$", "", n) for n in out]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cu", type=Path, help="a .cu file, e.g. csrc/rmsnorm.cu")
    parser.add_argument("--arch", default="90", help="compute capability digits (default 90)")
    parser.add_argument("--match", default="", help="keep kernels whose name contains this")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    if not args.cu.is_file():
        parser.error(f"{args.cu}: no such file")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = torch_nvcc_command(args.cu, Path(tmp) / "k.o", [args.arch]) + ["-Xptxas", "-v"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return 1
    rows = [r for r in parse_ptxas(proc.stderr) if args.match in r[0]]
    names = demangle([r[0] for r in rows])
    version = subprocess.run([cmd[0], "--version"], capture_output=True, text=True).stdout
    release = re.search(r"release [\d.]+, V[\d.]+", version)
    lines = [
        f"# ptxas registers and spill stores per kernel, {args.cu} for sm_{args.arch}, "
        f"{datetime.date.today()}, nvcc {release.group(0) if release else '?'}",
        f"# command: python3 benchmarks/kernels/ptxas_registers.py {args.cu} --arch {args.arch}"
        + (f" --match {args.match}" if args.match else ""),
        "# registers  spill-bytes  kernel<template arguments>",
        *sorted(f"{regs:11d}  {spill:11d}  {name}" for name, (_, _, regs, spill)
                in zip(names, rows)),
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
