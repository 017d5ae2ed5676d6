"""Gopher/C4-style filters with per-language units: eojeol for Korean, characters for ja/zh."""

import random
from pathlib import Path

import pytest

from kollm.data.filters import (
    FilterConfig,
    HeuristicFilter,
    _top_ngram_char_frac,
    check_document,
    default_filter_configs,
    dup_ngram_char_frac,
    make_filter_config,
)
from kollm.data.langid import LanguageIdentifier

PARALLEL = Path("/work/shared/data/corpus/ko-en-parallel")
CFG = default_filter_configs()


def _paragraph(lang: str, start: int, n: int = 12) -> str:
    lines = (PARALLEL / f"korean-english-park.test.{lang}").read_text(encoding="utf-8").splitlines()
    return "\n".join(lines[start:start + n])


@pytest.mark.skipif(not PARALLEL.is_dir(), reason="shared dev data absent")
def test_real_news_passes_in_both_languages():
    for start in range(0, 600, 60):
        ko, en = _paragraph("ko", start), _paragraph("en", start)
        assert LanguageIdentifier().predict(ko)[0] == "ko"
        assert check_document(ko, "ko", CFG["ko"]) is None, ko
        assert check_document(en, "en", CFG["en"]) is None, en


@pytest.mark.skipif(not PARALLEL.is_dir(), reason="shared dev data absent")
def test_korean_counts_eojeol_not_english_words():
    lines = _paragraph("ko", 100, 40).split("\n")
    ko = next("\n".join(lines[:k]) for k in range(1, 40) if len("\n".join(lines[:k]).split()) >= 30)
    n_eojeol = len(ko.split())
    assert 30 <= n_eojeol < 50  # passes Korean min (30 eojeol) though under Gopher's 50 English words
    assert check_document(ko, "ko", CFG["ko"]) is None
    assert check_document(ko, "ko", make_filter_config({"min_units": 50}, CFG["ko"])) == "too_short"


def test_cjk_thresholds_count_characters():
    ja = "日本語の文章は単語の間に空白を入れないので、文字の数で長さを数えます。" * 3
    assert len(ja.split()) == 1
    assert check_document(ja[:60], "ja", CFG["ja"]) == "too_short"  # < 100 characters
    assert check_document(ja.replace("。", "。\n"), "ja", make_filter_config(
        {"max_dup_line_frac": None, "max_dup_line_char_frac": None, "max_top_ngram_char_frac": {},
         "max_dup_ngram_char_frac": {}}, CFG["ja"])) is None
    # the text is its first sentence three times: character n-gram repetition catches it
    assert check_document(ja, "ja", CFG["ja"]) in ("top_ngram", "dup_ngram")


def test_gopher_rules_fire():
    en = FilterConfig(min_units=5)
    good = "The cat sat on the mat and looked at the birds outside the window."
    assert check_document(good, "en", en) is None
    assert check_document("Cat sat mat birds window outside looked.", "en", en) == "stop_words"
    assert check_document("#tag #news #daily the cat and the dog went to the park", "en", en) == "symbol_word_ratio"
    lines = "\n".join(["Buy now and save big today!"] * 4 + ["The offer ends soon for all of the members."])
    assert check_document(lines, "en", en) == "dup_lines"
    assert check_document(good + " lorem ipsum dolor", "en", en) == "bad_phrase"
    assert check_document("word " * 3, "en", en) == "too_short"


def test_each_line_and_length_rule_fires_on_its_own():
    """One document per rule that passes every other rule (all else off): a rule checking the wrong
    end of a line, the wrong length or the wrong ratio would let its document through."""
    off = dict(min_units=1, min_stop_words=None, max_dup_line_frac=None, max_dup_line_char_frac=None,
               max_dup_para_frac=None, max_dup_para_char_frac=None, max_top_ngram_char_frac={},
               max_dup_ngram_char_frac={}, max_symbol_word_ratio=None, max_symbol_char_ratio=None,
               min_mean_word_len=None, max_mean_word_len=None, max_bullet_lines=None, max_ellipsis_lines=None)
    en = FilterConfig(**off)
    cases = {
        "ellipsis_lines": "\n".join(["and then it went on...", "we never knew why…", "the end came."]),
        "bullet_lines": "\n".join(["- first point here", "• second point here", "plain closing line"]),
        "mean_word_len": "internationalization characterization institutionalization",
        "too_long": "word " * 11,
    }
    limits = {"ellipsis_lines": dict(max_ellipsis_lines=0.5), "bullet_lines": dict(max_bullet_lines=0.5),
              "mean_word_len": dict(max_mean_word_len=10.0), "too_long": dict(max_units=10)}
    for rule, text in cases.items():
        assert check_document(text, "en", en) is None, rule  # every rule off: passes
        assert check_document(text, "en", FilterConfig(**{**off, **limits[rule]})) == rule, rule
    # the same lines with the marker at the other end pass: the rules read the right end
    assert check_document("\n".join(["...and then it went on", "…we never knew why", "the end came."]), "en",
                          FilterConfig(**{**off, "max_ellipsis_lines": 0.5})) is None
    assert check_document("\n".join(["first point here -", "second point here •", "plain closing line"]), "en",
                          FilterConfig(**{**off, "max_bullet_lines": 0.5})) is None
    # symbols: 4 non-alphanumeric of 12 non-space characters = 0.33
    sym = FilterConfig(**{**off, "max_symbol_char_ratio": 0.3})
    assert check_document("ab!! cd?? ef gh", "en", sym) == "symbol_char_ratio"
    assert check_document("ab!! cd ef gh ij kl", "en", sym) is None  # 2 of 12
    paras = "\n\n".join(["The same paragraph again."] * 3 + ["Something else to say here."])
    assert check_document(paras, "en", FilterConfig(**{**off, "max_dup_para_frac": 0.3})) == "dup_paragraphs"


def test_top_ngram_char_fraction_known_value():
    units = "the cat the cat the dog".split()
    # most common 2-gram ("the", "cat") x2: 6 characters x 2 of 17 characters
    assert _top_ngram_char_frac(units, 2, 17) == pytest.approx(12 / 17)
    assert _top_ngram_char_frac("a b c d".split(), 2, 4) == 0.0  # no repeat, no fraction


def test_korean_jamo_ratio():
    ko = make_filter_config({"min_units": 1}, CFG["ko"])
    assert check_document("이 영화 정말 재밌어요 ㅋㅋ 강추합니다", "ko", ko) is None
    assert check_document("ㅋㅋㅋㅋㅋㅋㅋ ㅠㅠㅠㅠ 영화 대박", "ko", ko) == "jamo_ratio"


def test_dup_ngram_char_fraction_known_value():
    units = "a b c a b c x".split()
    # 3-gram (a,b,c) repeats at position 3: units 3..5 covered → 3 of 7 one-char units
    assert dup_ngram_char_frac(units, 3, 7) == pytest.approx(3 / 7)
    assert dup_ngram_char_frac(units, 4, 7) == 0.0


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(KeyError, match="min_wordz"):
        make_filter_config({"min_wordz": 3})
    with pytest.raises(ValueError, match="units"):
        FilterConfig(units="tokens")


def test_step_uses_the_documents_language():
    from datatrove.data import Document

    step = HeuristicFilter({"ko": make_filter_config({"min_units": 2}, CFG["ko"]),
                            "other": make_filter_config({"min_units": 100})})
    docs = [Document(text="좋은 영화 입니다", id="1", metadata={"lang": "ko"}),
            Document(text="short text here", id="2", metadata={"lang": "xx"})]
    assert [d.id for d in step.run(iter(docs))] == ["1"]
    assert step.stats["drop/too_short/xx"].total == 1


@pytest.mark.skipif(not PARALLEL.is_dir(), reason="shared dev data absent")
def test_repeated_ngram_coverage_shrinks_with_n():
    # check_document stops early on this property; verify it on real text with planted repeats
    rng = random.Random(0)
    lines = _paragraph("en", 0, 200).split("\n")
    for _ in range(30):
        doc = " ".join(rng.choice(lines) for _ in range(8)).split()
        fracs = [dup_ngram_char_frac(doc, n, sum(map(len, doc))) for n in range(2, 12)]
        assert all(a >= b for a, b in zip(fracs, fracs[1:]))
