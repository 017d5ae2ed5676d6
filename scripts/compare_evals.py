"""Before/after table of two `kollm eval --out` runs on the items both scored (docs/walkthrough.md).

`--limit N` takes the first N items of a task, so a shorter "after" run (a slow machine) scores a
prefix of the "before" run's items: this recomputes the before scores on that prefix from the
per-item samples. Per task: accuracy before → after, and the mean log-probability of the right
answer's text, which moves with training long before accuracy does. It is a probability of text,
not of tokens, so it compares across tokenizers (the walkthrough extends the vocabulary).

    python scripts/compare_evals.py runs/real-small-ko/eval-before runs/real-small-ko/eval-after
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def load(d: str) -> dict:
    p = Path(d)
    return json.loads((p / "results.json" if p.is_dir() else p).read_text(encoding="utf-8"))["samples"]


def summary(samples: list[dict], n: int) -> dict:
    rows = sorted(samples, key=lambda s: s["index"])[:n]
    acc = [s["metrics"]["acc"] for s in rows]
    gold = [s["responses"][s["target"]][0] for s in rows if isinstance(s.get("target"), int)]
    return {"n": len(rows), "acc": sum(acc) / len(acc), "stderr": math.sqrt(_var(acc) / len(acc)),
            "gold_logprob": sum(gold) / len(gold) if gold else float("nan")}


def _var(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return sum((x - m) ** 2 for x in xs) / max(len(xs) - 1, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before")
    p.add_argument("after")
    args = p.parse_args(argv)
    before, after = load(args.before), load(args.after)
    print("| task | n | acc before | acc after | mean log P(right answer) before | after |")
    print("|---|---|---|---|---|---|")
    for task in before:
        if task not in after:
            continue
        n = min(len(before[task]), len(after[task]))
        b, a = summary(before[task], n), summary(after[task], n)
        print(f"| {task} | {n} | {b['acc']:.2f} ± {b['stderr']:.2f} | {a['acc']:.2f} ± {a['stderr']:.2f} | "
              f"{b['gold_logprob']:.1f} | {a['gold_logprob']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
