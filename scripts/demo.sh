#!/usr/bin/env bash
# The main job on the embedded default: set up .venv/, then run the tiny end-to-end demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/kollm demo "$@"
