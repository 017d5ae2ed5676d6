"""Language mixture (Trillion eq. 2): known values, the α limits, and validation of β."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kollm.data.mixture import language_probs

SIZES = {"en": 850, "ko": 100, "ja": 50}


def test_known_values():
    p = language_probs(SIZES, alpha=0.5, beta={"en": 0.5, "ko": 0.4, "ja": 0.1})
    assert p == pytest.approx({"en": 0.5 * 0.85 + 0.5 * 0.5, "ko": 0.5 * 0.1 + 0.5 * 0.4, "ja": 0.5 * 0.05 + 0.5 * 0.1})
    assert language_probs(SIZES) == pytest.approx({"en": 0.85, "ko": 0.1, "ja": 0.05})  # α = 1: by size
    assert language_probs(SIZES, 0.0, {"ko": 0.7, "ja": 0.3}) == {"en": 0.0, "ko": 0.7, "ja": 0.3}  # α = 0: β


@pytest.mark.parametrize(("alpha", "beta", "match"), [
    (0.5, {"en": 0.5, "ko": 0.4}, "sum to 1"),
    (0.5, {"en": 0.5, "de": 0.5}, "unknown language 'de'"),
    (0.5, {"en": 1.5, "ko": -0.5}, r"beta\['ko'\]"),
    (0.5, None, "required when alpha < 1"),
    (1.2, None, "alpha"),
])
def test_invalid(alpha, beta, match):
    with pytest.raises(ValueError, match=match):
        language_probs(SIZES, alpha, beta)


@given(st.dictionaries(st.sampled_from(["en", "ko", "ja", "zh"]), st.integers(1, 10**12), min_size=1),
       st.floats(0, 1), st.data())
def test_is_a_distribution_between_size_and_beta(sizes, alpha, data):
    raw = {k: data.draw(st.floats(0.01, 1)) for k in sizes}
    beta = {k: v / sum(raw.values()) for k, v in raw.items()}
    p = language_probs(sizes, alpha, beta)
    assert sum(p.values()) == pytest.approx(1.0) and all(v >= 0 for v in p.values())
    total = sum(sizes.values())
    for k in sizes:  # a convex combination: between the size share and β
        lo, hi = sorted((sizes[k] / total, beta[k]))
        assert lo - 1e-12 <= p[k] <= hi + 1e-12
