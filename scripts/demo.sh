#!/usr/bin/env bash
# Sets up .venv and streams generated text for several prompts on the default model.
# Extra arguments go to examples/stream.py (e.g. --backend mp, --model DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec python examples/stream.py "$@"
