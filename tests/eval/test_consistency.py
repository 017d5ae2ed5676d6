"""Cross-lingual consistency: the three conditional ratios of Trillion §7.1 with their counts,
on a hand-made table where every count is known."""

import pytest

from kollm.eval.consistency import consistency


def records(correct: dict) -> list[dict]:
    return [{"index": i, "pair_id": k, "metrics": {"acc": float(v)}} for i, (k, v) in enumerate(correct.items())]


def test_three_ratios_with_counts():
    # pairs (en, ko): a TT, b TT, c TF, d FT, e FF, f FF ; g only in en
    en = records({"a": 1, "b": 1, "c": 1, "d": 0, "e": 0, "f": 0, "g": 1})
    ko = records({"a": 1, "b": 1, "c": 0, "d": 1, "e": 0, "f": 0})
    c = consistency(en, ko, "acc", "en", "ko")
    assert c["pairs"] == 6 and c["unpaired"] == {"en": 1, "ko": 0}
    assert c["P(ko✓|en✓)"] == {"value": 2 / 3, "count": 2, "of": 3}
    assert c["P(en✓|ko✗)"] == {"value": 1 / 3, "count": 1, "of": 3}  # c of {c, e, f}
    assert c["P(ko✓|en✗)"] == {"value": 1 / 3, "count": 1, "of": 3}  # d of {d, e, f}


def test_any_language_pair_and_errors():
    ja = records({"x": 1, "y": 0})
    zh = records({"x": 0, "y": 0})
    c = consistency(ja, zh, "acc", "ja", "zh")
    assert c["P(zh✓|ja✓)"]["value"] == 0.0 and c["P(ja✓|zh✗)"]["count"] == 1
    with pytest.raises(ValueError, match="no parallel items"):
        consistency(ja, records({"z": 1}))
    with pytest.raises(KeyError, match="no metric 'exact_match'"):
        consistency(ja, zh, "exact_match")
