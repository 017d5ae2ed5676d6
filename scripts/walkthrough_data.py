"""Inputs of recipes/real-small-ko.yaml (docs/walkthrough.md) from ../shared/data, in the formats
kollm reads: a CPT corpus, Korean chat rows for SFT and preference pairs for DPO.

    python scripts/walkthrough_data.py --data ../shared/data --out runs/real-small-ko-data

writes OUT/
  cpt.jsonl             {text, lang}: the Korean side of the news/JHE parallel sentences and NSMC
                        movie reviews (lang ko), and the English side of the news sentences (lang en:
                        DNA continues pretraining on Korean *and* English, which keeps the English)
  sft/train.jsonl       {messages}: kor-math problems in Korean (kor_question → the worked kor_answer)
  sft/heldout.jsonl     the held-out tenth, chosen as scripts/kor_math_pairs.py chooses (crc32 of file
                        and line), so no held-out problem is trained by SFT or by DPO
  dpo/{train,heldout}.jsonl   Korean pairs: the worked answer against the same answer with a wrong
                        final number (scripts/kor_math_pairs.py --langs ko)
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import kor_math_pairs  # noqa: E402

PARALLEL = ("korean-english-park.dev", "korean-english-park.test", "jhe-koen-dev", "jhe-koen-eval")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--out", required=True)
    p.add_argument("--reviews", type=int, default=8000, help="NSMC reviews in the CPT corpus")
    p.add_argument("--dpo-train", type=int, default=None, help="keep the first N training pairs (a slow machine)")
    args = p.parse_args(argv)
    data, out = Path(args.data), Path(args.out)

    cpt = []
    for stem in PARALLEL:
        par = data / "corpus/ko-en-parallel"
        cpt += [{"text": t, "lang": "ko"} for t in (par / f"{stem}.ko").read_text(encoding="utf-8").splitlines() if t.strip()]
        if stem.startswith("korean-english-park"):
            cpt += [{"text": t, "lang": "en"} for t in (par / f"{stem}.en").read_text(encoding="utf-8").splitlines()
                    if t.strip()]
    with open(data / "corpus/nsmc-reviews.jsonl", encoding="utf-8") as f:
        for _, line in zip(range(args.reviews), f):
            cpt.append({"text": json.loads(line)["text"], "lang": "ko"})
    write_jsonl(out / "cpt.jsonl", cpt)

    math = data / "post-train/kor-math"
    sft: dict[str, list[dict]] = {"train": [], "heldout": []}
    for name in kor_math_pairs.FILES:
        for line, raw in enumerate((math / name).read_text(encoding="utf-8").splitlines(), 1):
            row = json.loads(raw)
            split = "heldout" if zlib.crc32(f"{name}:{line}".encode()) % 10 == 0 else "train"
            sft[split].append({"messages": [{"role": "user", "content": row["kor_question"]},
                                            {"role": "assistant", "content": row["kor_answer"].strip()}]})
    for split, rows in sft.items():
        write_jsonl(out / "sft" / f"{split}.jsonl", rows)
    kor_math_pairs.main(["--data", str(math), "--out", str(out / "dpo"), "--langs", "ko"])
    if args.dpo_train is not None:
        pairs = out / "dpo/train.jsonl"
        pairs.write_text("".join(pairs.read_text(encoding="utf-8").splitlines(keepends=True)[:args.dpo_train]),
                         encoding="utf-8")
    print(f"wrote {out}: cpt {len(cpt)} documents, sft {len(sft['train'])} train / {len(sft['heldout'])} held out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
