#!/usr/bin/env bash
# One GPU check, at most ~10 minutes on one H100/H200: where kollm stands on CUDA.
#   bench/gpu_check.sh [OUT_DIR]      (default: $OUT if set, else bench/results)
# 1. the compile and bf16 tests with inductor (KOLLM_COMPILE_BACKEND=inductor; CPU tests use aot_eager)
# 2. bench/gpu_check.py: FlexAttention fwd/bwd vs SDPA (bf16, document + XLDA masks), training tokens/s
#    and MFU eager vs compiled (trillion-7b shape, 4 of 32 blocks, micro-batch 2 x 4096), the same with
#    block checkpointing (the recipes' setting), each with planned vs measured peak memory; the chunked
#    LM head + loss against the dense one at 32,768 tokens x 128,256 vocabulary (peak memory, tokens/s,
#    planned beside measured); decode tokens/s. `bench/gpu_check.py --smoke-cpu` runs it all on CPU.
# Writes OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.log. Without CUDA it says so and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-bench/results}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
LOG="$OUT_DIR/gpu_check.log"
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device here; nothing to check (writing $OUT_DIR/gpu_check.json)" | tee "$LOG"
  "$PY" bench/gpu_check.py --out "$OUT_DIR/gpu_check.json"
  exit 0
fi
nvidia-smi 2>&1 | head -15 | tee "$LOG"
rc=0
KOLLM_COMPILE_BACKEND=inductor timeout 240 "$PY" -m pytest -q -p no:logging \
  tests/train/test_compile.py tests/train/test_mixed_precision.py tests/model/test_masks.py tests/model/test_flex_compiled.py \
  tests/model/test_generate_static.py::test_cuda_graph_step_equals_eager_and_keeps_its_cache 2>&1 | tail -5 | tee -a "$LOG" || rc=1
timeout 420 "$PY" bench/gpu_check.py --out "$OUT_DIR/gpu_check.json" "${@:2}" 2>&1 | tee -a "$LOG" || rc=1
echo "gpu_check: exit $rc; summary $OUT_DIR/gpu_check.json" | tee -a "$LOG"
exit $rc
