#!/usr/bin/env bash
# Run ON THE GPU MACHINE from the repo root (python3 with torch+CUDA; PYTHONPATH already holds
# megatron-core and the repo root; $OUT set). Builds megastack._kernels in place, runs the GPU
# tests, then the benchmark. Everything goes to $OUT/kernels.log; the benchmark tables to $OUT.
# Budget: about 5 minutes in all (each step has its own timeout; the benchmark writes its
# tables after every kernel, RMSNorm first, so a cut-short run keeps what it measured).
set -uo pipefail
: "${OUT:?set OUT to the results directory}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/kernels.log") 2>&1
PY=python3
status=0

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

echo "== build (setup.py build_ext --inplace)"
# Only the architecture of this device, and parallel compiles when ninja is present.
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}"
export MAX_JOBS="${MAX_JOBS:-16}"
if ! MEGASTACK_SKIP_KERNELS=0 timeout 150 $PY setup.py build_ext --inplace; then
    echo "BUILD FAILED"; exit 1
fi
$PY -c "import torch, megastack._kernels as k; print('built', k.__file__)" || { echo "IMPORT FAILED"; exit 1; }

echo "== GPU tests"
# Not -x: this runs once, so collect every failure.
timeout 150 $PY -m pytest tests/kernels -m gpu -q -rfE -p no:cacheprovider || status=1

echo "== benchmark"
timeout 240 $PY benchmarks/kernels/bench_kernels.py --profile --out "$OUT" || status=1

echo "== done (status $status)"
exit $status
