"""How much a Korean vocabulary budget lowers Korean tokens per character (Trillion §3.5, §6.3).

Trains, on the real dev corpus of ../shared/data, byte-level BPE tokenizers with
`kollm.tokenizer.train` and measures tokens per character on held-out Korean and English text:

  1. equal size: English-only (en=8000) against bilingual (en=4000 + ko=4000);
  2. the report's vocabulary ablation: en=4000 + ko=24552 trained once, with the nested Korean
     series 1536 / 5000 / 13000 (each a subset of the next) taken from the same run.

Training text: NSMC reviews + korean-english-park.test.ko (Korean), korean-english-park.test.en +
jhe-koen-eval.en (English). Held out: korean-english-park.dev.* and jhe-koen-dev.* (parallel).

    .venv/bin/python bench/bench_tokenizer_budget.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from kollm.tokenizer.stats import measure
from kollm.tokenizer.train import TokenizerConfig, train


def lines(path: Path) -> list[str]:
    return [t.strip() for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = ap.parse_args()
    par = Path(args.data) / "corpus" / "ko-en-parallel"
    nsmc = [json.loads(x)["text"] for x in (Path(args.data) / "corpus" / "nsmc-reviews.jsonl").open(encoding="utf-8")]
    texts = {"en": lines(par / "korean-english-park.test.en") + lines(par / "jhe-koen-eval.en"),
             "ko": [t for t in nsmc if t.strip()] + lines(par / "korean-english-park.test.ko")}
    held = {lang: lines(par / f"korean-english-park.dev.{lang}") + lines(par / f"jhe-koen-dev.{lang}")
            for lang in ("ko", "en")}
    print(f"train: en {len(texts['en']):,} lines, ko {len(texts['ko']):,} lines; "
          f"held out: {len(held['ko']):,} parallel lines")

    def row(name: str, tok) -> dict:
        ko, en = measure(tok, held["ko"], "ko"), measure(tok, held["en"], "en")
        r = {"tokenizer": name, "vocab": tok.get_vocab_size(), "ko_tokens_per_char": round(ko.tokens_per_char, 3),
             "en_tokens_per_char": round(en.tokens_per_char, 3)}
        print(f"  {name:<28} vocab {r['vocab']:>6,}   ko {r['ko_tokens_per_char']:.3f} tokens/char   "
              f"en {r['en_tokens_per_char']:.3f} tokens/char")
        return r

    t0 = time.perf_counter()
    print("equal size:")
    en_only, summary, _ = train({"en": texts["en"]}, TokenizerConfig(budgets={"en": 8000}))
    added = summary["languages"][0]["added"]
    base = row(f"en={added}", en_only)
    bi, summary, _ = train(texts, TokenizerConfig(budgets={"en": added // 2, "ko": added - added // 2}))
    both = row(f"en={added // 2} + ko={added - added // 2}", bi)
    print(f"  Korean tokens/char {base['ko_tokens_per_char']:.3f} -> {both['ko_tokens_per_char']:.3f} "
          f"({both['ko_tokens_per_char'] / base['ko_tokens_per_char'] - 1:+.0%}); English "
          f"{base['en_tokens_per_char']:.3f} -> {both['en_tokens_per_char']:.3f} "
          f"({both['en_tokens_per_char'] / base['en_tokens_per_char'] - 1:+.0%})")

    print("nested Korean series (one run, en=4000 fixed):")
    full, summary, nested = train(texts, TokenizerConfig(budgets={"en": 4000, "ko": 24552}, series={"ko": [1536, 5000, 13000]}))
    en4k, _, _ = train({"en": texts["en"]}, TokenizerConfig(budgets={"en": 4000}))
    row("en=4000 (no Korean)", en4k)
    for k in (1536, 5000, 13000):
        row(f"en=4000 + ko={k}", nested[f"ko-{k}"])
    added_ko = summary["languages"][1]["added"]
    row(f"en=4000 + ko={added_ko}", full)
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
