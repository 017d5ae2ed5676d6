"""Are two runs of the same recipe the same? For a refactor that must change nothing (issue 25):
every metrics.jsonl under the two directories equal row by row, except the keys that measure the
machine rather than the model (wall clock, throughput, MFU, peak memory: `time`, `*_s`,
`tokens_per_s`, `mfu`, `peak_mem_*`), and every exported *.safetensors equal bit for bit (same
tensor names, dtypes, shapes and bytes).

    python bench/compare_runs.py RUN_A RUN_B    # exit 0: identical; 1: the differences are listed
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open


def machine_key(key: str) -> bool:
    return key in ("time", "tokens_per_s", "mfu") or key.endswith("_s") or key.startswith("peak_mem")


def rows(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not machine_key(k)}
            for line in path.read_text().splitlines() if line.strip()]


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(-1).view(torch.uint8),
                                                                       b.contiguous().view(-1).view(torch.uint8))


def compare(a: Path, b: Path) -> list[str]:
    bad, n_rows, n_tensors = [], 0, 0
    for pattern in ("metrics.jsonl", "*.safetensors"):
        fa, fb = (sorted(p.relative_to(root) for p in root.rglob(pattern)) for root in (a, b))
        if fa != fb:
            bad.append(f"{pattern}: {sorted(set(fa) ^ set(fb))} in one run only")
        for rel in sorted(set(fa) & set(fb)):
            if pattern == "metrics.jsonl":
                ra, rb = rows(a / rel), rows(b / rel)
                n_rows += min(len(ra), len(rb))
                if len(ra) != len(rb):
                    bad.append(f"{rel}: {len(ra)} vs {len(rb)} rows")
                bad += [f"{rel} row {i}: " + str({k: (x.get(k), y.get(k)) for k in x.keys() | y.keys()
                                                  if x.get(k) != y.get(k)})
                        for i, (x, y) in enumerate(zip(ra, rb)) if x != y]
                continue
            with safe_open(a / rel, "pt") as ta, safe_open(b / rel, "pt") as tb:
                if sorted(ta.keys()) != sorted(tb.keys()):
                    bad.append(f"{rel}: tensor names differ")
                    continue
                for k in ta.keys():
                    n_tensors += 1
                    if not same_bytes(ta.get_tensor(k), tb.get_tensor(k)):
                        bad.append(f"{rel}: {k} differs")
    print(f"{n_rows} metrics rows and {n_tensors} exported tensors compared")
    return bad


def main(argv: list[str]) -> int:
    bad = compare(Path(argv[0]), Path(argv[1]))
    print("\n".join(bad) if bad else "identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
