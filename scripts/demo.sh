#!/usr/bin/env bash
# Sets up .venv (once) and streams generated text for several prompts on the default model.
# Extra arguments go to `actorexec generate` (e.g. --backend mp, --model DIR, "a prompt").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh serve      # serve: so `.venv/bin/actorexec serve` works too
# shellcheck disable=SC1091
. .venv/bin/activate
exec python -m actorexec generate "$@"
