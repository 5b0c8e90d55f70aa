#!/usr/bin/env bash
# Creates .venv (if missing) and installs actorexec into it, torch first.
# Usage: `bash scripts/bootstrap.sh [extra]`, e.g. `test`. Safe to re-run: each
# step that is already done is skipped, and says so.
#
# torch first, because a bare torch requirement resolves to a multi-GB CUDA
# build on an ordinary Linux machine. Where the machine has no NVIDIA GPU and
# the PyTorch CPU index (download.pytorch.org/whl/cpu) is reachable, the CPU
# build comes from there (~200 MB); otherwise `pip install torch==2.13.0` from
# the default index, which is the CPU wheel only where a local wheel store
# provides it (CUDA, ~5 GB, elsewhere). An importable torch (a GPU machine's
# own build) is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="2.13.0"
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"
step() { printf '==> %s\n' "$*"; }

if [ -x .venv/bin/python ]; then
    if [ -n "${PYTHON:-}" ]; then
        echo "note: PYTHON=$PYTHON is ignored: .venv already exists" \
             "($(.venv/bin/python --version)); delete .venv to rebuild it with $PYTHON"
    fi
else
    PYTHON="${PYTHON:-python3}"
    step "creating .venv with $PYTHON ($("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1

has_nvidia_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }
cpu_index_reachable() {
    python -c "import urllib.request as u; u.urlopen('$TORCH_CPU_INDEX/torch/', timeout=5)" \
        >/dev/null 2>&1
}

if python -c "import torch" 2>/dev/null; then
    step "torch $(python -c 'import torch; print(torch.__version__)') already installed: kept"
elif ! has_nvidia_gpu && cpu_index_reachable; then
    step "installing torch==$TORCH_VERSION, CPU build, from $TORCH_CPU_INDEX (~200 MB)"
    python -m pip install --progress-bar on "torch==$TORCH_VERSION" \
        --index-url "$TORCH_CPU_INDEX" ||
        python -m pip install --progress-bar on "torch==$TORCH_VERSION"
else
    step "installing torch==$TORCH_VERSION from the default index (1-2 minutes)"
    python -m pip install --progress-bar on "torch==$TORCH_VERSION"
fi

extra="${1:-}"
target=".${extra:+[$extra]}"
# The install is redone only when what it depends on (pyproject.toml, setup.py,
# the compiled ring core's source) changed, or it is broken; the Python code is
# installed editable, so its edits need no reinstall.
hash="$(cat pyproject.toml setup.py runtime/transport/_ringcore*.[ch] | python -c \
    'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
stamp=".venv/.actorexec-installed-${extra:-base}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ] &&
        python -c "import actorexec.entrypoints.cli" 2>/dev/null; then
    step "actorexec${extra:+[$extra]} already installed in .venv (pyproject.toml unchanged): skipped"
else
    step "installing actorexec${extra:+[$extra]} into .venv (editable)"
    set +e
    python -m pip install --progress-bar on -e "$target" |
        grep -v -e '^Requirement already satisfied' -e '^  Using cached'
    status=${PIPESTATUS[0]}
    set -e
    if [ "$status" -ne 0 ]; then
        echo "error: pip install -e $target failed (exit $status)" >&2
        exit "$status"
    fi
    echo "$hash" > "$stamp"
    echo "$hash" > .venv/.actorexec-installed-base     # every extra includes the plain install
    if [ "$extra" = test ]; then                        # and `test` includes `serve`
        echo "$hash" > .venv/.actorexec-installed-serve
    fi
fi
