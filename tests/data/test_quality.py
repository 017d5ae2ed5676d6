"""Quality scores and Trillion's per-language percentile keep."""

import math
import random

import pytest
from datatrove.data import Document

from kollm.data.quality import (
    KEEP_PRESETS,
    QualityConfig,
    QualityScore,
    heuristic_score,
    keep_count,
    select_top,
)


def test_presets_are_the_reports_numbers():
    assert QualityConfig().fractions == {"en": 0.8, "default": 0.5}
    assert QualityConfig(keep="anneal").fractions == {"en": 0.2, "default": 0.1}
    assert QualityConfig(keep={"ko": 0.3}).fractions == {"ko": 0.3, "default": 1.0}
    assert set(KEEP_PRESETS) == {"pretrain", "anneal", "all"}
    with pytest.raises(ValueError, match="preset"):
        QualityConfig(keep="best")
    with pytest.raises(ValueError, match="fraction"):
        QualityConfig(keep={"en": 1.5})
    with pytest.raises(ValueError, match="classifier"):
        QualityConfig(scorer="classifier")


@pytest.mark.parametrize("n,frac", [(10, 0.8), (10, 0.5), (7, 0.5), (1000, 0.1), (3, 0.2), (1, 0.1)])
def test_select_top_keeps_exactly_the_fraction(n, frac):
    rng = random.Random(n)
    scores = [(rng.choice([0.1, 0.5, 0.5, 0.9]), f"s{i:05d}") for i in range(n)]  # many ties
    kept = select_top(scores, frac)
    assert len(kept) == keep_count(n, frac) == math.ceil(n * frac - 1e-9)
    worst_kept = min(q for q, s in scores if s in kept)
    assert all(q <= worst_kept for q, s in scores if s not in kept)
    shuffled = scores[:]
    rng.shuffle(shuffled)
    assert select_top(shuffled, frac) == kept  # ties broken by source, not by order


def test_heuristic_prefers_prose_to_spam():
    prose = ("The museum opened a new wing this year. Visitors can see paintings from the 18th century, "
             "and guides explain how the works were restored.\nEntry is free on Sundays.")
    spam = "BUY NOW!!! $$$ click click click click click click >>> www ### ### ###"
    ko = "이 박물관은 올해 새 전시관을 열었다. 방문객들은 18세기 그림을 볼 수 있다."
    assert heuristic_score(prose) > heuristic_score(spam) + 0.2
    assert 0.0 <= heuristic_score(spam) < heuristic_score(ko) <= 1.0
    assert heuristic_score("") == 0.0


def test_field_scorer_counts_missing_scores():
    step = QualityScore(QualityConfig(scorer="field"))
    docs = [Document(text="a", id="1", metadata={"quality": 2}), Document(text="b", id="2"),
            Document(text="c", id="3", metadata={"quality": "high"})]
    out = list(step.run(iter(docs)))
    assert [(d.id, d.metadata["quality"]) for d in out] == [("1", 2.0)]
    assert step.stats["drop/no_quality/und"].total == 2
