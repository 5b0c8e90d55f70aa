#!/usr/bin/env bash
# Creates .venv (if missing) and installs actorexec into it, CPU torch first.
# Usage: source-free; `bash scripts/bootstrap.sh [extra]`, e.g. `test`.
# Why torch first: a bare torch requirement resolves to a multi-GB CUDA build;
# torch==2.13.0 is the CPU wheel. Where torch already imports (a GPU machine's
# own build), it is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" 2>/dev/null; then
    python -m pip install -q "torch==2.13.0"
fi
extra="${1:-}"
python -m pip install -q -e ".${extra:+[$extra]}"
