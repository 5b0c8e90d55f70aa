#!/usr/bin/env bash
# One device call (see benchmarks/README.md): install what the GPU machine lacks,
# run the GPU tests, then the benchmarks; logs and JSON go to $OUT.
# Carry .whl (made by scripts/device_wheels.sh) with the call.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/actorexec-out}"; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
    --upgrade --target /tmp/site . || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpus.txt"
nvidia-smi topo -m 2>&1 | tee -a "$OUT/gpus.txt"
python3 -c 'import torch; print("torch", torch.__version__, "gpus", torch.cuda.device_count())'
what="${1:-all}"
if [ "$what" = all ] || [ "$what" = tests ]; then
    python3 -m pytest -q -p no:cacheprovider -m gpu tests/actors/test_gpu.py 2>&1 \
        | tee "$OUT/gpu_tests.log"
fi
if [ "$what" = all ] || [ "$what" = bench ]; then
    python3 benchmarks/parallel_throughput.py --out "$OUT/parallel_throughput.json" \
        --trace-dir "$OUT/traces" 2>&1 \
        | tee "$OUT/parallel_throughput.log"
fi
if [ "$what" = profile ]; then
    (cd benchmarks && python3 profile_step.py --out "$OUT/profile_step.json") 2>&1 \
        | tee "$OUT/profile_step.log"
fi
