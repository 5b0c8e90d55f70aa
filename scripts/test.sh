#!/usr/bin/env bash
# The one test command (README and .ci/run): set up .venv, lint, run every test.
# pytest exits 5 when it collects no test; set -e makes that a failure too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh test
# shellcheck disable=SC1091
. .venv/bin/activate
ruff check .
python -m pytest -q -p no:cacheprovider "$@"
