#!/usr/bin/env bash
# Create .venv/ in the repo root and install kollm with the given extras (default: test). Idempotent.
#   bash scripts/setup.sh             # kollm + test tools (the demo)
#   bash scripts/setup.sh test,bench  # + the peers the parity tests run (lm-eval, TRL, mergekit)
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
# torch first and pinned: the CPU wheel is served locally; an unpinned resolve would pull CUDA.
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -e ".[${1:-test}]"
# The code-evaluation sandbox (docs/sandbox.md) runs programs under bubblewrap; CI runs this as root.
if ! command -v bwrap >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get install -y -q bubblewrap || { apt-get update -q && apt-get install -y -q bubblewrap; }; } >/dev/null \
      || echo "setup: could not install bubblewrap: code tasks will refuse to run (see docs/sandbox.md)" >&2
  else
    echo "setup: bubblewrap (bwrap) is missing and this is not root: install it (apt-get install bubblewrap)" \
         "or code tasks (humaneval, mbpp) refuse to run; see docs/sandbox.md" >&2
  fi
fi
