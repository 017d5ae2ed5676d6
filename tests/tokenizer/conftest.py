"""Shared real Korean/English text from /work/shared/data (tests skip cleanly without it)."""

from __future__ import annotations

from pathlib import Path

import pytest

PARALLEL = Path(__file__).resolve().parents[3] / "shared" / "data" / "corpus" / "ko-en-parallel"


def _lines(pattern: str) -> list[str]:
    return [line.strip() for f in sorted(PARALLEL.glob(pattern)) for line in f.open(encoding="utf-8") if line.strip()]


@pytest.fixture(scope="session")
def corpus() -> dict[str, dict[str, list[str]]]:
    """{"train": {lang: texts}, "heldout": {lang: texts}}: news sentences to train on, the JHE
    evaluation set held out."""
    if not PARALLEL.is_dir():
        pytest.skip(f"dev data not found at {PARALLEL}")
    return {"train": {"en": _lines("korean-english-park.*.en") + _lines("jhe-koen-dev.en"),
                      "ko": _lines("korean-english-park.*.ko") + _lines("jhe-koen-dev.ko")},
            "heldout": {"en": _lines("jhe-koen-eval.en"), "ko": _lines("jhe-koen-eval.ko")}}


@pytest.fixture(scope="session")
def bilingual(corpus):
    """en=1500, ko=1200 with the nested Korean series 100 and 400."""
    from kollm.tokenizer.train import TokenizerConfig, train

    return train(corpus["train"], TokenizerConfig(budgets={"en": 1500, "ko": 1200}, series={"ko": [100, 400]}))
