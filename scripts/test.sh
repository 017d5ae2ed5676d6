#!/usr/bin/env bash
# The test command: set up .venv/, lint, then the whole suite (torchrun tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,bench  # parity tests run the peers: they must not skip in CI
bash scripts/system-deps.sh
.venv/bin/ruff check src tests bench
.venv/bin/python -m pytest -n 2 --durations=15 "$@"
