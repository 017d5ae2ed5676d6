"""Tokens/s of `kollm data tokenize` against plain `tokenizers` on the same text.

Two comparisons, same tokenizer, same documents, same process, rounds alternating so machine
noise hits both sides:
  encode:     kollm's encode path (`encode_texts`: encode_batch_fast → uint32 arrays, in the
              batches tokenize uses) vs plain `Tokenizer.encode_batch` + `.ids` on the same batches,
              and vs `encode_batch_fast` + `.ids` (the same call; isolates kollm's own overhead).
  end-to-end: `tokenize()` of a JSONL file into shards (read, validate, encode, append EOS, write,
              progress record) vs the minimal script: json.loads per line + `encode_batch` per batch.
              Throughput counts text tokens (the EOS per document kollm adds is not counted).
Text: Korean NSMC reviews and the Korean/English parallel sentences from ../shared/data, repeated.

    .venv/bin/python bench/bench_tokenize.py [--repeat 2 --rounds 3 --batch 1000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from kollm.data.tokenize import encode_texts, tokenize
from kollm.tokenizer.train import TokenizerConfig, train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "corpus"


def load(repeat: int) -> list[tuple[str, str]]:
    docs = [(json.loads(line)["text"], "ko") for line in (DATA / "nsmc-reviews.jsonl").open(encoding="utf-8")]
    for f in sorted((DATA / "ko-en-parallel").iterdir()):
        docs += [(line.strip(), f.suffix[1:]) for line in f.open(encoding="utf-8") if line.strip()]
    return docs * repeat


def batches(xs: list, n: int):
    for i in range(0, len(xs), n):
        yield xs[i:i + n]


def timed(fn) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=1000)
    args = p.parse_args()
    docs = load(args.repeat)
    texts = [t for t, _ in docs]
    tok, _, _ = train({lang: [t for t, lg in docs[: len(docs) // args.repeat] if lg == lang] for lang in ("en", "ko")},
                      TokenizerConfig(budgets={"en": 4000, "ko": 3000}))

    def plain_encode() -> int:
        return sum(len(e.ids) for b in batches(texts, args.batch) for e in tok.encode_batch(b, add_special_tokens=False))

    def plain_fast() -> int:  # the same tokenizers call kollm makes, ids left as Python lists
        return sum(len(e.ids) for b in batches(texts, args.batch)
                   for e in tok.encode_batch_fast(b, add_special_tokens=False))

    def kollm_encode() -> int:
        return sum(a.size for b in batches(texts, args.batch) for a in encode_texts(tok, b))

    tmp = Path(tempfile.mkdtemp())
    src = tmp / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t, "lang": lg}, ensure_ascii=False) + "\n" for t, lg in docs))

    def plain_e2e() -> int:
        n, batch = 0, []
        with src.open(encoding="utf-8") as f:
            for line in f:
                batch.append(json.loads(line)["text"])
                if len(batch) == args.batch:
                    n += sum(len(e.ids) for e in tok.encode_batch(batch, add_special_tokens=False))
                    batch = []
        return n + sum(len(e.ids) for e in tok.encode_batch(batch, add_special_tokens=False))

    def kollm_e2e() -> int:
        shutil.rmtree(tmp / "shards", ignore_errors=True)
        s = tokenize([str(src)], tok, tmp / "shards", workers=1, batch_size=args.batch)
        return sum(s["tokens"].values()) - sum(s["docs"].values())  # minus one EOS per document

    plain_encode(), kollm_encode()  # warm-up
    names = ("plain_encode", "plain_fast", "kollm_encode", "plain_e2e", "kollm_e2e")
    results: dict[str, list[float]] = {k: [] for k in names}
    tokens = {}
    for _ in range(args.rounds):
        for name, fn in zip(names, (plain_encode, plain_fast, kollm_encode, plain_e2e, kollm_e2e)):
            seconds, n = timed(fn)
            results[name].append(seconds)
            tokens[name] = n
    assert len(set(tokens.values())) == 1, tokens
    shutil.rmtree(tmp)
    n = tokens["plain_encode"]
    print(f"{len(texts):,} documents, {n:,} tokens, batch {args.batch}, {args.rounds} rounds (median)")
    med = {k: statistics.median(v) for k, v in results.items()}
    for k, v in med.items():
        print(f"  {k:<13} {n / v:>14,.0f} tokens/s")
    print(f"encode path:  kollm / plain = {med['plain_encode'] / med['kollm_encode']:.3f}x throughput "
          f"(overhead {100 * (med['kollm_encode'] / med['plain_encode'] - 1):+.1f} %); "
          f"vs encode_batch_fast: overhead {100 * (med['kollm_encode'] / med['plain_fast'] - 1):+.1f} %")
    print(f"end-to-end:   kollm / plain = {med['plain_e2e'] / med['kollm_e2e']:.3f}x throughput "
          f"(overhead {100 * (med['kollm_e2e'] / med['plain_e2e'] - 1):+.1f} %)")


if __name__ == "__main__":
    main()
