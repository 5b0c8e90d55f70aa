#!/usr/bin/env bash
# Downloads the wheels the GPU device machines lack (Python 3.12, x86_64, no
# network there) into .whl/, which `run` carries. On the device, install with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
#       --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
# The device has torch, uvloop and anyio already; aiozmq, pyzmq, msgspec and psutil
# (rpc_roundtrip.py) travel. For its vLLM baseline, put the vllm package modules its
# queue imports under .whl/vllm_min/vllm (device_run.sh adds that folder to the path).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
for pkg in msgspec==0.22.0 pyzmq==27.3.0 aiozmq==1.0.0 pytest-asyncio==1.5.0 psutil==7.2.2; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_26_x86_64 --platform manylinux_2_24_x86_64 \
        --platform manylinux1_x86_64 -d .whl "$pkg" || \
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl "$pkg"
done
ls -la .whl
