"""Preference pairs from ../shared/data/post-train/kor-math for recipes/tiny-dpo.yaml: a correct
worked answer (the dataset's Korean or English step-by-step solution, ending in the gold answer)
against the same reasoning with a wrong final number.

    python scripts/kor_math_pairs.py --data ../shared/data/post-train/kor-math --out runs/tiny-dpo/pairs

writes OUT/{train,heldout}-prompts.jsonl ({id, prompt (one user turn), answer}) and
OUT/{train,heldout}-responses.jsonl ({id, responses: [right, wrong]}), then builds the pairs with
`kollm dpo pairs --verifier math` (which checks each response's final number against the gold
answer, so a corruption that happened to be right would tie and be dropped) into OUT/train.jsonl
and OUT/heldout.jsonl (a tenth of the problems, chosen by a hash of file and line, held out).
Only the addsub / multiarith / single_eq files carry worked answers (kor-mwp's `reason` is
model-written and not always right, so it is left out). By default only answers that show the
work — the final number appears in the text before the closing statement — are kept: there a
wrong final number contradicts the answer's own reasoning, which a tiny model can learn to notice
(`--all` keeps every answer that ends in the gold number; most only restate the question).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import zlib
from pathlib import Path

FILES = ("kor-addsub-train.jsonl", "kor-multiarith-train.jsonl", "kor-single_eq-train.jsonl")
_LAST_NUMBER = re.compile(r"(-?\d[\d,]*(?:\.\d+)?)(?!.*\d)", re.S)


def shows_work(text: str) -> bool:
    """The worked answer reaches its final number before stating it (`4 + 5 = 9 ... The answer is
    9`), so a wrong final number contradicts the text itself."""
    nums = [n.replace(",", "") for n in re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)]
    return len(nums) >= 2 and nums[-1] in nums[:-1]


def corrupt(text: str, answer: float, rng: random.Random) -> str | None:
    """The same text with its last number replaced by a wrong one (off by 1–9 or a factor of 10)."""
    m = _LAST_NUMBER.search(text)
    if not m:
        return None
    value = float(m.group(1).replace(",", ""))
    if abs(value - answer) > 1e-6:
        return None  # the worked answer does not end in the gold number: skip the problem
    wrong = value * 10 if rng.random() < 0.2 else value + rng.choice([-1, 1]) * rng.randint(1, 9)
    if wrong < 0:
        wrong = value + rng.randint(1, 9)
    s = str(int(wrong)) if float(wrong).is_integer() else f"{wrong:g}"
    return text[:m.start()] + s + text[m.end():]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/post-train/kor-math")
    p.add_argument("--out", required=True)
    p.add_argument("--langs", default="ko,en", help="ko: kor_question/kor_answer, en: question/reasoning")
    p.add_argument("--heldout-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--all", action="store_true",
                   help="keep problems whose worked answer does not show the final number before stating it")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, tuple[list, list]] = {"train": ([], []), "heldout": ([], [])}
    n = skipped = 0
    for name in FILES:
        path = Path(args.data) / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found (kor-math from ../shared/data)")
        for line, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            row = json.loads(raw)
            answer = float(row["answer"])
            for lang in args.langs.split(","):
                q, a = (row["kor_question"], row["kor_answer"]) if lang == "ko" else \
                    (row["question"], row["reasoning_completion"].strip())
                wrong = corrupt(a, answer, rng)
                if wrong is None or not (args.all or shows_work(a)):
                    skipped += 1
                    continue
                pid = f"{name.split('-')[1]}-{line}-{lang}"
                # by problem, so the two languages of one problem never straddle the split
                split = "heldout" if zlib.crc32(f"{name}:{line}".encode()) % args.heldout_every == 0 else "train"
                # conversational: the chat template renders it, as for the SFT model and online sampling
                splits[split][0].append({"id": pid, "prompt": [{"role": "user", "content": q}],
                                         "answer": row["answer"]})
                splits[split][1].append({"id": pid, "responses": [a, wrong]})
                n += 1
    from kollm.data.pairs import main as pairs_main

    for split, (prompts, responses) in splits.items():
        for kind, rows in (("prompts", prompts), ("responses", responses)):
            (out / f"{split}-{kind}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                                       encoding="utf-8")
        pairs_main(["--prompts", str(out / f"{split}-prompts.jsonl"), "--responses",
                    str(out / f"{split}-responses.jsonl"), "--out", str(out / f"{split}.jsonl"), "--verifier", "math"])
    print(f"{n} worked answers kept, {skipped} skipped (not ending in the gold number, or not showing the work)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
