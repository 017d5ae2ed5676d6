#!/usr/bin/env bash
# Create .venv/ in the repo root and install kollm with its test tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
# torch first and pinned: the CPU wheel is served locally; an unpinned resolve would pull CUDA.
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
