"""Speed of part B's evaluation pieces against a peer measured in the same run.

1. Code sandbox: seconds per HumanEval program through kollm.eval.code_exec (all layers) vs a bare
   `python -c` subprocess of the same program (no isolation) -- the cost of the sandbox.
2. IFEval scoring: responses per second through kollm.ifeval.score_row vs lm-eval's
   `ifeval.utils.process_results` (strict + loose) on the same rows (sentence/language checkers
   left out: lm-eval's need downloads).

    .venv/bin/python bench/bench_eval_partB.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "eval"))

from test_code_exec import HUMANEVAL  # noqa: E402
from test_ifeval_en import CASES, NEEDS_DOWNLOAD, _lm_eval_registry  # noqa: E402

from kollm.eval.code_exec import SandboxConfig, humaneval_program, run_program, sandbox_kind  # noqa: E402
from kollm.ifeval import score_row  # noqa: E402


def bench_sandbox(n: int = 20) -> None:
    progs = [humaneval_program(HUMANEVAL[i % 2], HUMANEVAL[i % 2]["canonical_solution"]) for i in range(n)]
    cfg = SandboxConfig()
    t0 = time.perf_counter()
    assert all(run_program(p, cfg).passed for p in progs)
    ours = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for p in progs:
        subprocess.run([sys.executable, "-c", p], check=True, capture_output=True)
    peer = (time.perf_counter() - t0) / n
    print(f"sandbox: {ours * 1000:.1f} ms/program ({sandbox_kind()}) vs bare subprocess "
          f"{peer * 1000:.1f} ms/program: ratio {ours / peer:.2f}x")


def bench_ifeval(reps: int = 200) -> None:
    _lm_eval_registry()
    from lm_eval.tasks.ifeval import utils as lm_utils

    cases = [c for c in CASES if c[0] not in NEEDS_DOWNLOAD]
    rows = [{"key": i, "prompt": "p", "instruction_id_list": [c[0]], "kwargs": [c[1]]} for i, c in enumerate(cases)]
    pairs = [(r, c[2]) for r, c in zip(rows, cases)] + [(r, c[3]) for r, c in zip(rows, cases)]
    t0 = time.perf_counter()
    for _ in range(reps):
        for r, resp in pairs:
            score_row(r, resp)
    ours = reps * len(pairs) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(reps):
        for r, resp in pairs:
            lm_utils.process_results(r, [resp])
    peer = reps * len(pairs) / (time.perf_counter() - t0)
    print(f"ifeval: {ours:,.0f} responses/s vs lm-eval {peer:,.0f} responses/s: ratio {ours / peer:.2f}x")


if __name__ == "__main__":
    bench_sandbox()
    bench_ifeval()
