#!/usr/bin/env bash
# The GPU session's one prepared run (see benchmarks/device/README.md). From the repo root on a
# GPU machine whose python3 has torch+CUDA; megatron-core comes as a carried wheel in .whl/.
# Writes under $OUT: kernels.log, bench_kernels.{json,md}, trainer.log, gpu_trainer.json,
# bench_trainer_gpu.json, plan_24L2048H.txt.
set -uo pipefail
: "${OUT:?set OUT}"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
status=0

# 1. Kernels: build, parity tests, benchmark (about 5 minutes; each step has its own limit).
timeout 420 bash benchmarks/kernels/run_on_device.sh || status=1

# 2. Trainer: 20 bf16 iterations, the default spec (TE when importable, else local) and the
#    fused-kernel spec, side by side on the same seed and data.
exec > >(tee -a "$OUT/trainer.log") 2>&1
python3 -c "import importlib.util as u; print('transformer_engine importable:', u.find_spec('transformer_engine') is not None)"
for impl in auto fused; do
    echo "== pretrain bf16 --transformer-impl $impl"
    MEGASTACK_METRICS_FILE=/tmp/m_$impl.jsonl timeout 100 python3 -m megastack.pretrain \
        --model mini-8l128h --vocab-size 4096 --mock-data --bf16 --train-iters 20 \
        --micro-batch-size 8 --global-batch-size 32 --lr 1e-3 --lr-warmup-iters 2 \
        --log-interval 5 --eval-interval 20 --eval-iters 2 --transformer-impl $impl || status=1
done
python3 - <<'PY'
import json, torch
out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
for impl in ("auto", "fused"):
    try:
        out[impl] = [json.loads(l) for l in open(f"/tmp/m_{impl}.jsonl")]
    except OSError as e:
        out[impl] = str(e)
json.dump(out, open(__import__("os").environ["OUT"] + "/gpu_trainer.json", "w"), indent=1)
PY

# 3. 1B-class preset: megastack trainer vs plain megatron-core loop, tokens/s, MFU, peak memory.
echo "== 24L2048H bf16 throughput"
timeout 180 python3 benchmarks/trainer/bench_trainer.py --model 24L2048H --bf16 \
    --micro-batch-size 4 --global-batch-size 16 --train-iters 10 --warmup-iters 3 --rounds 1 \
    --out "$OUT/bench_trainer_gpu.json" || status=1
timeout 60 python3 tools/plan.py --model 24L2048H \
    --nnodes 1 --nproc-per-node 1 --micro-batch-size 4 --global-batch-size 16 --bf16 > "$OUT/plan_24L2048H.txt" 2>&1
echo "== done (status $status)"
exit $status
