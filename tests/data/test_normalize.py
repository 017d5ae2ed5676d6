"""Hangul-safe normalisation: NFC composes, compatibility jamo survive, whitespace/controls clean."""

import json
import unicodedata
from pathlib import Path

import pytest
from datatrove.data import Document
from hypothesis import given, settings
from hypothesis import strategies as st

from kollm.data.normalize import Normalize, normalize_text

NSMC = Path("/work/shared/data/corpus/nsmc-reviews.jsonl")


def test_conjoining_jamo_compose_to_syllables():
    assert normalize_text("\u1112\u1161\u11ab\u1100\u1173\u11af") == "한글"
    assert normalize_text(unicodedata.normalize("NFD", "대한민국 만세")) == "대한민국 만세"


def test_compatibility_jamo_are_not_nfkc_mapped():
    # NFKC would turn ㅋ (U+314B) into conjoining U+110F; the review slang must survive unchanged.
    assert unicodedata.normalize("NFKC", "ㅋㅋㅋ") != "ㅋㅋㅋ"
    assert normalize_text("재밌다ㅋㅋㅋ ㅠㅠ") == "재밌다ㅋㅋㅋ ㅠㅠ"


def test_never_emits_decomposed_hangul():
    out = normalize_text(unicodedata.normalize("NFKD", "가나다라 마바사 아자차카타파하"))
    assert not any(0x1100 <= ord(c) <= 0x11FF for c in out)


def test_whitespace_controls_and_fullwidth():
    raw = "ＡＢＣ１２３\u3000테스트\u200b입니다\r\n\r\n\r\n\r\n다음\x00줄\t\t끝  \u00a0 "
    assert normalize_text(raw) == "ABC123 테스트입니다\n\n다음줄 끝"
    assert normalize_text("ＡＢＣ", fold_fullwidth=False) == "ＡＢＣ"
    family = "👨\u200d👩\u200d👧"
    assert normalize_text(family) == family  # ZWJ joins emoji: kept


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=80))
def test_idempotent(text):
    once = normalize_text(text)
    assert normalize_text(once) == once


@pytest.mark.skipif(not NSMC.is_file(), reason="shared dev data absent")
def test_real_reviews_keep_their_letters():
    rows = [json.loads(line) for line in NSMC.read_text(encoding="utf-8").splitlines()[:3000]]
    for row in rows:
        out = normalize_text(row["text"])
        assert normalize_text(out) == out
        # normalisation only touches spaces/controls here: letters and digits are unchanged
        assert [c for c in out if c.isalnum()] == [c for c in unicodedata.normalize("NFC", row["text"])
                                                   .translate({c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)})
                                                   if c.isalnum()]


def test_step_drops_documents_that_become_empty():
    step = Normalize()
    docs = [Document(text=" \u200b\n\t", id="a"), Document(text=" 안녕 ", id="b")]
    out = list(step.run(iter(docs)))
    assert [d.text for d in out] == ["안녕"]
    assert step.stats["drop/empty/und"].total == 1
