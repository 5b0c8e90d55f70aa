#!/usr/bin/env bash
# One device call (see benchmarks/README.md): install what the GPU machine lacks,
# then run the named parts; logs and JSON go to $OUT. Carry .whl (made by
# scripts/device_wheels.sh) with the call.
#   parts: tests (every gpu-marked test), decode (decode_latency.py),
#          parallel (parallel_throughput.py), profile (profile_step.py),
#          kernels (attention_kernels.py), rpc (rpc_roundtrip.py),
#          restart (restart_recovery.py); default: tests decode
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/actorexec-out}"; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
# vLLM's queue for the rpc baseline: only the Python modules it imports, carried as a
# folder (.whl/vllm_min/vllm); CPU platform, so importing it loads no CUDA platform.
if [ -d .whl/vllm_min ]; then
    export PYTHONPATH="$PYTHONPATH:$PWD/.whl/vllm_min" VLLM_TARGET_DEVICE=cpu
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
    --upgrade --target /tmp/site . || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpus.txt"
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, "gpus", torch.cuda.device_count())'
parts="${*:-tests decode}"
for part in $parts; do
    case "$part" in
    tests)
        timeout "${TESTS_TIMEOUT:-900}" python3 -m pytest -q -p no:cacheprovider -m gpu -rs tests/ 2>&1 \
            | tee "$OUT/gpu_tests.log" | tail -40 ;;
    kernels-on-cuda)  # the fused-op and step-prep checks (interpreter on CPU, compiled here)
        timeout 300 python3 -m pytest -q -p no:cacheprovider \
            tests/actors/model/test_fused_ops.py tests/actors/model_runner/test_step_prep_kernels.py \
            2>&1 | tee "$OUT/kernel_checks.log" | tail -5 ;;
    engine)
        (cd benchmarks && timeout "${ENGINE_TIMEOUT:-300}" python3 engine_decode.py \
            --out "$OUT/engine_decode.json" ${ENGINE_ARGS:-}) 2>&1 | tee "$OUT/engine_decode.log" ;;
    tests-*)
        timeout 900 python3 -m pytest -q -p no:cacheprovider -m gpu -rs -k "${part#tests-}" \
            tests/ 2>&1 | tee "$OUT/gpu_tests.log" | tail -60 ;;
    decode)
        (cd benchmarks && timeout 1200 python3 decode_latency.py \
            --out "$OUT/decode_latency.json" ${DECODE_ARGS:-}) 2>&1 | tee "$OUT/decode_latency.log" ;;
    kernels)
        (cd benchmarks && timeout 600 python3 attention_kernels.py \
            --out "$OUT/attention_kernels.json") 2>&1 | tee "$OUT/attention_kernels.log" ;;
    parallel)
        (cd benchmarks && timeout "${PARALLEL_TIMEOUT:-570}" python3 parallel_throughput.py \
            --out "$OUT/parallel_throughput.json" ${PARALLEL_ARGS:-}) \
            2>&1 | tee "$OUT/parallel_throughput.log" ;;
    rpc)
        (cd benchmarks && timeout "${RPC_TIMEOUT:-600}" python3 rpc_roundtrip.py \
            --out "$OUT/rpc_roundtrip.json" ${RPC_ARGS:-}) \
            2>&1 | tee "$OUT/rpc_roundtrip.log" ;;
    profile)
        (cd benchmarks && python3 profile_step.py --out "$OUT/profile_step.json") 2>&1 \
            | tee "$OUT/profile_step.log" ;;
    restart)
        (cd benchmarks && timeout 500 python3 restart_recovery.py ${RESTART_ARGS:-} \
            --out "$OUT/restart_recovery.json") 2>&1 | tee "$OUT/restart_recovery.log" ;;
    esac
done
