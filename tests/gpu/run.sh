#!/usr/bin/env bash
# The prepared GPU check (issue 8): at most ~8 minutes on one NVIDIA GPU.  Run from the
# repository root on the lent machine, with the wheels of ../shared/device/prepare-wheels.sh
# in .whl/ (carried):
#     bash tests/gpu/run.sh            # results and logs under $OUT (or ./gpu-check)
# 1. the CUDA tests (tests/gpu): counter-based random numbers bit-identical to the CPU's,
#    training and evaluation on the GPU equal to the CPU's to rounding (float64);
# 2. the bench on the paper's job shapes (float32, then TF32 matmuls), with GPU utilisation;
# 3. throughput of 1, 2, 4 and 8 UCI training jobs sharing the GPU.
set -uo pipefail
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
fi
[ -d /opt/torch/.venv/bin ] && export PATH=/opt/torch/.venv/bin:$PATH
export PYTHONPATH=${PYTHONPATH:-$PWD/src} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"

echo "== 1. CUDA tests"
timeout 150 python3 -m pytest tests/gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.txt"
echo "== 2. bench, float32 matmuls"
timeout 200 python3 -m vaefail.bench --device cuda --rounds 1 2>&1 | tee "$OUT/bench-float32.txt"
echo "== 2b. bench, TF32 matmuls (matmul_precision=high)"
timeout 120 python3 -m vaefail.bench --device cuda --rounds 1 --matmul-precision high 2>&1 | tee "$OUT/bench-tf32.txt"
echo "== 3. jobs sharing the GPU"
timeout 150 python3 -m vaefail.bench --device cuda --jobs-per-device 1 2 4 8 --epochs 20 2>&1 | tee "$OUT/jobs-per-gpu.txt"
echo "== done: $OUT"
