"""Language ID: ≥ 99.5 % on both sides of the real ko-en parallel corpus; scripts for ja/zh."""

from pathlib import Path

import pytest
from datatrove.data import Document

from kollm.data.langid import LanguageId, LanguageIdentifier

PARALLEL = Path("/work/shared/data/corpus/ko-en-parallel")


def _lines(lang: str) -> list[str]:
    return [ln for f in sorted(PARALLEL.glob(f"*.{lang}")) for ln in f.read_text(encoding="utf-8").splitlines()
            if ln.strip()]


@pytest.mark.skipif(not PARALLEL.is_dir(), reason="shared dev data absent")
@pytest.mark.parametrize("lang", ["ko", "en"])
def test_accuracy_on_parallel_corpus(lang):
    lid = LanguageIdentifier()
    lines = _lines(lang)
    assert len(lines) > 4000
    accuracy = sum(lid.predict(ln)[0] == lang for ln in lines) / len(lines)
    assert accuracy >= 0.995, accuracy


@pytest.mark.parametrize("text,lang", [
    ("今日は天気がいいので、公園へ散歩に行きました。", "ja"),
    ("東京タワーは日本の有名な観光地です。", "ja"),
    ("我们明天去北京参观故宫和长城。", "zh"),
    ("这个问题非常复杂，需要仔细研究。", "zh"),
    ("서울은 대한민국의 수도이며 한강(漢江)이 흐른다.", "ko"),
    ("Le chat dort sur le canapé depuis ce matin.", "other"),
    ("Der Hund läuft schnell über die Straße.", "other"),
    ("Москва — столица России.", "other"),
    ("Travel is fun.", "en"),
])
def test_scripts_and_latin_languages(text, lang):
    got, score = LanguageIdentifier().predict(text)
    assert got == lang
    assert 0.0 < score <= 1.0


def test_no_letters_is_other_with_zero_confidence():
    assert LanguageIdentifier().predict("1234 !!! 5678") == ("other", 0.0)


def test_step_sets_metadata_and_filters():
    step = LanguageId(keep=["ko", "en"])
    docs = [Document(text="오늘 날씨가 좋다", id="1"), Document(text="It is sunny today.", id="2"),
            Document(text="今日は晴れです。", id="3")]
    out = list(step.run(iter(docs)))
    assert [(d.id, d.metadata["lang"]) for d in out] == [("1", "ko"), ("2", "en")]
    assert step.stats["drop/lang_not_kept/ja"].total == 1
    assert all(0 < d.metadata["lang_score"] <= 1 for d in out)


def test_confidence_is_the_deciding_script_share_and_min_score_drops():
    lid = LanguageIdentifier()
    # Korean: Hangul (+ Hanja) share of letters: 3 Hangul of 3 + 4 Latin letters
    assert lid.predict("한국어 text12") == ("ko", pytest.approx(3 / 7))
    assert lid.predict("漢字 한국어") == ("ko", pytest.approx(1.0))  # Hanja counts for Korean
    # English: model probability times the Latin share, so Korean letters mixed in lower it
    en_pure, en_mixed = lid.predict("The weather is nice today")[1], lid.predict("The weather is nice today 가")[1]
    assert 0.5 < en_pure <= 1 and en_mixed == pytest.approx(en_pure * 21 / 22, rel=0.05)
    step = LanguageId(min_score=0.9)
    out = list(step.run(iter([Document(text="오늘 날씨가 좋다", id="ko"), Document(text="한국어 text12", id="mix")])))
    assert [d.id for d in out] == ["ko"] and step.stats["drop/lang_low_score/ko"].total == 1
