"""Curation throughput (documents/s per core) against datatrove's own steps, same documents, same
process, rounds alternating so machine noise hits both sides.

- filters: kollm HeuristicFilter (Gopher quality + repetition rules, per language) vs datatrove's
  GopherQualityFilter + GopherRepetitionFilter (given a whitespace tokenizer: its default NLTK
  tokenizer needs a download);
- minhash: kollm's character-shingle signatures vs datatrove's word-shingle signatures (whitespace);
- langid: kollm LanguageIdentifier vs py3langid over all 97 languages (script shortcuts are ours);
- pipeline: `kollm data curate` end to end (4 stages, local executor, 1 and 2 workers) in documents/s;
- near-dedup quality: precision/recall on 500 planted near-duplicates (1-3 random character edits)
  of real NSMC reviews among all unique reviews of >= 60 characters.

Documents: the real dev corpus (/work/shared/data): NSMC reviews (short, Korean) and "articles" of
10 consecutive news sentences (Korean and English). Needs the shared data.

    .venv/bin/python bench/bench_curation.py [--rounds 3] [--docs 20000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

os.environ.setdefault("LOGURU_LEVEL", "WARNING")  # before datatrove imports loguru: keep the output readable
import tempfile
import time
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.dedup.minhash import MinhashDedupSignature
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
from datatrove.utils.word_tokenizers import WordTokenizer

from kollm.data.dedup import DedupConfig, dedup_texts, jaccard, signature_step
from kollm.data.filters import HeuristicFilter
from kollm.data.langid import LanguageIdentifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))
from test_dedup import _perturb  # noqa: E402  (the planted edits the near-dedup test uses)

DATA = Path("/work/shared/data/corpus")


class Whitespace(WordTokenizer):
    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return text.split("\n")

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(0, len(text))]


def corpus(n: int) -> list[tuple[str, str]]:
    reviews = [json.loads(x)["text"] for x in (DATA / "nsmc-reviews.jsonl").read_text().splitlines()]
    docs = [(t, "ko") for t in reviews[: n // 2]]
    for lang in ("ko", "en"):
        lines = [ln for f in sorted((DATA / "ko-en-parallel").glob(f"*.{lang}")) for ln in f.read_text().splitlines()]
        docs += [("\n".join(lines[i:i + 10]), lang) for i in range(0, len(lines) - 10, 3)][: n // 4]
    return docs


def _docs(items):
    return [Document(text=t, id=str(i), metadata={"lang": lang}) for i, (t, lang) in enumerate(items)]


def run_filters_kollm(items):
    list(HeuristicFilter().run(iter(_docs(items))))


def run_filters_datatrove(items):
    ws = Whitespace()
    steps = [GopherQualityFilter(language=ws), GopherRepetitionFilter(language=ws)]
    data = iter(_docs(items))
    for s in steps:
        data = s.run(data)
    list(data)


def run_minhash(items, word: bool):
    with tempfile.TemporaryDirectory() as d:
        cfg = DedupConfig()
        if word:  # datatrove's own stage: 5-word shingles
            step = MinhashDedupSignature(output_folder=d, config=cfg.minhash(), language=Whitespace())
        else:
            step = signature_step(d, cfg)
        step.run(iter(_docs(items)))


def run_langid_kollm(items):
    lid = LanguageIdentifier()
    for t, _ in items:
        lid.predict(t)


def run_langid_py3langid(items):
    from py3langid.langid import MODEL_FILE  # noqa: N814
    from py3langid.langid import LanguageIdentifier as PyLangId

    model = PyLangId.from_model_file(MODEL_FILE, norm_probs=True)
    for t, _ in items:
        model.classify(t[:2000])


def run_pipeline(items, workers: int) -> float:
    from kollm.data.pipeline import CurateConfig, run_curation

    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "in"
        src.mkdir()
        items = random.Random(0).sample(items, len(items))  # files of equal cost, so tasks balance
        per = max(1, len(items) // 8)
        for k in range(8):
            rows = items[k * per:(k + 1) * per]
            (src / f"{k}.jsonl").write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t, _ in rows))
        t0 = time.perf_counter()
        run_curation(CurateConfig.from_dict({"inputs": [str(src)], "output": f"{d}/out", "workers": workers,
                                             "filters": {"all": {"min_units": 3, "min_stop_words": None}}}))
        return time.perf_counter() - t0


def dedup_quality(edits: int, planted: int = 500, min_chars: int = 60) -> str:
    rng = random.Random(0)
    seen, pool = set(), []
    for line in (DATA / "nsmc-reviews.jsonl").read_text().splitlines():
        t = json.loads(line)["text"].strip()
        if len(t) >= min_chars and t not in seen:
            seen.add(t)
            pool.append(t)
    rng.shuffle(pool)
    variants = []
    for t in pool[:planted]:
        for _ in range(edits):
            t = _perturb(t, rng)
        variants.append(t)
    texts, n = pool + variants, len(pool)
    with tempfile.TemporaryDirectory() as d:
        drops = dedup_texts(texts, [f"{i:08d}" for i in range(len(texts))], DedupConfig(), d)
    truth = set(range(planted)) | set(range(n, n + planted))
    recall = sum(i in drops or n + i in drops for i in range(planted)) / planted
    precision = sum(i in truth for i in drops) / max(1, len(drops))
    mean_j = sum(jaccard(a, b) for a, b in zip(pool, variants)) / planted
    return f"{len(texts)} docs, {edits} edit(s), mean Jaccard {mean_j:.2f}: precision {precision:.4f} recall {recall:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1, help="repeat the corpus (numbered) for a longer pipeline run")
    args = ap.parse_args()
    items = corpus(args.docs)
    items = [(f"{t} ({k})" if k else t, lang) for k in range(args.repeat) for t, lang in items]
    n, chars = len(items), sum(len(t) for t, _ in items)
    print(f"{n} documents, {sum(len(t) for t, _ in items) / 1e6:.1f} M characters, 1 process")
    pairs = {"filters": (run_filters_kollm, run_filters_datatrove),
             "minhash": (lambda x: run_minhash(x, False), lambda x: run_minhash(x, True)),
             "langid": (run_langid_kollm, run_langid_py3langid)}
    for name, (ours, peer) in pairs.items():
        best = [float("inf"), float("inf")]
        for _ in range(args.rounds):
            for k, fn in enumerate((ours, peer)):
                t0 = time.perf_counter()
                fn(items)
                best[k] = min(best[k], time.perf_counter() - t0)
        print(f"{name:8s} kollm {n / best[0]:9.0f} docs/s   peer {n / best[1]:9.0f} docs/s   ratio {best[1] / best[0]:.2f}x")
    for edits in (1, 2, 3):
        print("near-dedup", dedup_quality(edits))
    for workers in (1, 2):
        wall = min(run_pipeline(items, workers) for _ in range(max(1, args.rounds - 1)))
        print(f"pipeline workers={workers}: {n / wall:.0f} docs/s, {n / wall / workers:.0f} docs/s per core, "
              f"{chars / wall / workers / 1e6:.2f} M chars/s per core")


if __name__ == "__main__":
    main()
