"""Quality scores and the per-language percentile keep of Trillion 7B §2 ("Filtering").

Trillion scores every document with a small model distilled from Qwen-72B judgements (0-5,
binarised at 3) and keeps the top 80 % of English and the top 50 % of other languages; in the
annealing phase the top 20 % and top 10 %. Scores come from (`scorer`):
- "classifier": a model trained by `kollm data classifier` (probability of judge score ≥ 3);
- "field": the input rows' own `quality` value;
- "heuristic": a model-free score in [0, 1] averaging simple signals (length, lines ending in
  sentence punctuation, symbol share, repeated 5-grams, words with letters). It is a weak prior
  for runs without a classifier, not a substitute for one.
The keep itself is global (all tasks' scores), so it runs in the pipeline's decide stage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline

from kollm.data.documents import source_key
from kollm.data.filters import TERMINAL, dup_ngram_char_frac
from kollm.data.stats import CurationStep

KEEP_PRESETS = {"pretrain": {"en": 0.8, "default": 0.5}, "anneal": {"en": 0.2, "default": 0.1}, "all": {"default": 1.0}}


@dataclass
class QualityConfig:
    scorer: str = "heuristic"  # heuristic | classifier | field
    classifier: str | None = None  # directory written by `kollm data classifier train`
    keep: str | dict[str, float] = "pretrain"  # preset name or {lang: top fraction, "default": ...}
    batch_size: int = 256
    fractions: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        if self.scorer not in ("heuristic", "classifier", "field"):
            raise ValueError(f"quality: scorer must be heuristic|classifier|field, got {self.scorer!r}")
        if self.scorer == "classifier" and not self.classifier:
            raise ValueError("quality: scorer 'classifier' needs quality.classifier (a model directory)")
        if self.scorer == "classifier" and not (Path(self.classifier) / "classifier.json").is_file():
            # checked here, before datatrove starts workers that would each fail with a traceback
            raise FileNotFoundError(f"quality.classifier: {self.classifier} is not a classifier directory "
                                    "(no classifier.json; see `kollm data classifier train`)")
        if isinstance(self.keep, str):
            if self.keep not in KEEP_PRESETS:
                raise ValueError(f"quality: unknown keep preset {self.keep!r} (known: {sorted(KEEP_PRESETS)})")
            self.fractions = dict(KEEP_PRESETS[self.keep])
        else:
            self.fractions = {str(k): float(v) for k, v in self.keep.items()}
        self.fractions.setdefault("default", 1.0)
        for lang, frac in self.fractions.items():
            if not 0.0 < frac <= 1.0:
                raise ValueError(f"quality: keep fraction for {lang!r} must be in (0, 1], got {frac}")


def heuristic_score(text: str, cjk: bool = False) -> float:
    units = [c for c in text if not c.isspace()] if cjk else text.split()
    if not units:
        return 0.0
    length = min(1.0, math.log1p(len(units)) / math.log1p(2000 if cjk else 500))
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    terminal = sum(ln.endswith(TERMINAL) for ln in lines) / len(lines)
    chars = [c for c in text if not c.isspace()]
    symbols = max(0.0, 1.0 - 3.0 * sum(not c.isalnum() for c in chars) / len(chars))
    repeats = 1.0 - dup_ngram_char_frac(units, 10 if cjk else 5, sum(map(len, units)))
    alpha = 1.0 if cjk else sum(any(c.isalpha() for c in w) for w in units) / len(units)
    return (length + terminal + symbols + repeats + alpha) / 5.0


def keep_count(n: int, fraction: float) -> int:
    return min(n, math.ceil(n * fraction - 1e-9))


def select_top(scores: list[tuple[float, str]], fraction: float) -> set[str]:
    """Sources of the top `fraction` of (score, source) pairs; ties broken by source, so the kept
    set does not depend on input order or on how the corpus was split into tasks."""
    ranked = sorted(scores, key=lambda x: (-x[0], source_key(x[1])))
    return {src for _, src in ranked[: keep_count(len(ranked), fraction)]}


class QualityScore(CurationStep):
    """Pipeline step: set `doc.metadata["quality"]` in [0, 1]; rows without a score in "field"
    mode are dropped as "no_quality" (counted, never guessed)."""

    name = "quality"

    def __init__(self, config: QualityConfig | None = None):
        super().__init__()
        self.config = config or QualityConfig()
        self._model = None

    def process(self, doc: Document) -> str | None:
        c = self.config
        if c.scorer == "field":
            q = doc.metadata.get("quality")
            if not isinstance(q, (int, float)) or isinstance(q, bool) or math.isnan(q):
                return "no_quality"
            doc.metadata["quality"] = float(q)
        elif c.scorer == "heuristic":
            doc.metadata["quality"] = heuristic_score(doc.text, doc.metadata.get("lang") in ("ja", "zh"))
        return None

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if self.config.scorer != "classifier":
            yield from super().run(data, rank, world_size)
            return
        from kollm.data.classifier import QualityClassifier  # torch/transformers only when used

        if self._model is None:
            self._model = QualityClassifier.load(self.config.classifier)
        batch: list[Document] = []

        def flush() -> DocumentsPipeline:
            with self.track_time("batch"):
                probs = self._model.predict_proba([d.text for d in batch])
            for d, p in zip(batch, probs):
                d.metadata["quality"] = float(p)
                lang, nbytes = d.metadata.get("lang", "und"), len(d.text.encode("utf-8"))
                self.stat_update(f"docs_in/{lang}", f"docs_out/{lang}")
                self.stat_update(f"bytes_in/{lang}", f"bytes_out/{lang}", value=nbytes)
            yield from batch
            batch.clear()

        for doc in data:
            batch.append(doc)
            if len(batch) >= self.config.batch_size:
                yield from flush()
        if batch:
            yield from flush()
