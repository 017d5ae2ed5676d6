"""Offline language identification for ko, en, ja, zh and "other", with a confidence.

datatrove's LanguageFilter downloads a fastText model, which an offline cluster cannot do. Scripts
settle the CJK languages without a model: Hangul means Korean (Korean news text mixes in Hanja and
Latin words, so the test is Hangul's *share* of letters, not a majority), Kana means Japanese
(Japanese is mostly Kanji, so a modest Kana share is enough), Han alone means Chinese. Text that is
mostly Latin goes to py3langid (a packaged langid.py model, no network) restricted to common
Latin-script languages and with prior odds for English (`en_prior`), so that short English lines
are not pulled to other languages (measured in tests/data/test_langid.py).
Confidence is the deciding script's share of letters, times py3langid's probability for Latin text.
"""

from __future__ import annotations

from dataclasses import dataclass

from datatrove.data import Document

from kollm.data.stats import CurationStep

LANGS = ("ko", "en", "ja", "zh", "other")
# Latin-script languages py3langid may choose between; everything but "en" is reported as "other".
LATIN_CANDIDATES = ["en", "de", "fr", "es", "it", "pt", "nl", "sv", "da", "no", "fi", "pl", "cs", "tr",
                    "id", "ms", "vi", "ro", "hu", "tl", "sw", "et", "lt", "lv", "hr", "sk", "sl"]


@dataclass
class LangIdConfig:
    # Share of letters that are Hangul to call a text Korean. Low on purpose: one Hangul syllable
    # carries 2-3 letters' worth of text, and Korean headlines quote English at length.
    hangul_min: float = 0.1
    kana_min: float = 0.05  # share of CJK letters that are Kana to call a text Japanese
    cjk_min: float = 0.3  # share of letters that are Han (+Kana) to call a text zh / ja
    latin_min: float = 0.5  # share of letters that are Latin before asking the Latin model
    # Prior odds of English against each other Latin language. langid.py assumes a uniform prior,
    # which sends short English lines ("Travel is fun.") to other languages; in an en/ko corpus
    # English dominates Latin-script text. 5 keeps short French/German/Spanish lines apart.
    en_prior: float = 5.0
    sample_chars: int = 2000  # classify the first N characters: cheap and enough for a document


def _script_counts(text: str) -> tuple[int, int, int, int, int]:
    hangul = kana = han = latin = other = 0
    for ch in text:
        o = ord(ch)
        if o < 0x80:
            if ch.isalpha():
                latin += 1
        elif 0xAC00 <= o <= 0xD7A3 or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F:
            hangul += 1
        elif 0x3040 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF or 0xFF66 <= o <= 0xFF9D:
            kana += 1
        elif 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF:
            han += 1
        elif ch.isalpha():
            if o <= 0x24F or 0x1E00 <= o <= 0x1EFF:  # Latin-1, extended A/B, extended additional
                latin += 1
            else:
                other += 1
    return hangul, kana, han, latin, other


class LanguageIdentifier:
    def __init__(self, config: LangIdConfig | None = None):
        self.config = config or LangIdConfig()
        self._latin = None

    def _latin_model(self):
        if self._latin is None:  # lazy: loading the model takes ~0.5 s and most workers are forked
            from py3langid.langid import MODEL_FILE
            from py3langid.langid import LanguageIdentifier as PyLangId

            self._latin = PyLangId.from_model_file(MODEL_FILE, norm_probs=True)
            self._latin.set_languages(LATIN_CANDIDATES)
        return self._latin

    def predict(self, text: str) -> tuple[str, float]:
        """Return (language, confidence in [0, 1]); language is one of LANGS."""
        c = self.config
        text = text[: c.sample_chars]
        hangul, kana, han, latin, other = _script_counts(text)
        letters = hangul + kana + han + latin + other
        if letters == 0:
            return "other", 0.0
        if hangul / letters >= c.hangul_min:
            return "ko", (hangul + han) / letters  # Hanja is ordinary in Korean text
        cjk = kana + han
        if cjk / letters >= c.cjk_min:
            if kana / cjk >= c.kana_min:
                return "ja", cjk / letters
            return "zh", han / letters
        if latin / letters >= c.latin_min:
            probs = dict(self._latin_model().rank(text))
            probs["en"] *= c.en_prior
            lang = max(probs, key=probs.get)
            return ("en" if lang == "en" else "other"), probs[lang] / sum(probs.values()) * latin / letters
        return "other", 1.0 - max(hangul, cjk, latin) / letters


class LanguageId(CurationStep):
    """Pipeline step: set `lang` and `lang_score`; optionally drop languages not in `keep` or
    documents whose confidence is below `min_score` (drop reasons "lang_not_kept", "lang_low_score")."""

    name = "langid"

    def __init__(self, config: LangIdConfig | None = None, keep: list[str] | None = None, min_score: float = 0.0):
        super().__init__()
        self.identifier = LanguageIdentifier(config)
        self.keep = set(keep) if keep else None
        self.min_score = min_score

    def process(self, doc: Document) -> str | None:
        lang, score = self.identifier.predict(doc.text)
        doc.metadata["lang"], doc.metadata["lang_score"] = lang, score
        if self.keep is not None and lang not in self.keep:
            return "lang_not_kept"
        return "lang_low_score" if score < self.min_score else None
