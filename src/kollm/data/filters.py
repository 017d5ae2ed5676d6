"""Heuristic document filters in the style of Gopher (Rae et al. 2021, App. A: quality and
repetition rules) and C4 (Raffel et al. 2020), with per-language settings.

Datatrove's GopherQualityFilter counts words with NLTK/spaCy tokenisers that need downloads and
treats Korean like English. Here a "word" is a whitespace token, which for Korean is an eojeol
(a content word plus its particles: one Korean eojeol ≈ 1.5-2 English words), so Korean length
thresholds are smaller and mean-word-length bounds differ. Japanese and Chinese do not separate
words, so their units are characters (`units: chars`) and their n-gram repetition rules run on
characters. Each rule has a drop reason that the run report counts.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass, field

from datatrove.data import Document

from kollm.data.stats import CurationStep

_BULLETS = ("•", "●", "◦", "▪", "-", "*", "·", "‣", "○")
TERMINAL = (".", "!", "?", '"', "'", "”", "’", "。", "！", "？", "」", "』", "…", ")", "다", "요", "죠", "까")
_EN_STOP = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])


@dataclass
class FilterConfig:
    """One language's thresholds; None disables a rule. Defaults are Gopher's English values."""

    units: str = "words"  # words (whitespace tokens; eojeol for Korean) | chars (ja, zh)
    min_units: int | None = 50
    max_units: int | None = 100_000
    min_mean_word_len: float | None = 3.0
    max_mean_word_len: float | None = 10.0
    max_symbol_word_ratio: float | None = 0.1  # '#' and '…' per word
    max_symbol_char_ratio: float | None = 0.3  # characters that are neither letters, digits nor spaces
    max_bullet_lines: float | None = 0.9
    max_ellipsis_lines: float | None = 0.3
    min_alpha_words: float | None = 0.8  # share of words containing a letter (Hangul counts)
    min_stop_words: int | None = 2  # English only: Gopher's "at least two of the, be, to, ..."
    min_terminal_lines: float | None = None  # C4: share of lines ending in terminal punctuation
    max_jamo_ratio: float | None = None  # Korean: bare jamo (ㅋㅋㅋ, ㅠㅠ) as a share of Hangul
    max_dup_line_frac: float | None = 0.3
    max_dup_line_char_frac: float | None = 0.2
    max_dup_para_frac: float | None = 0.3
    max_dup_para_char_frac: float | None = 0.2
    max_top_ngram_char_frac: dict[int, float] = field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16})
    max_dup_ngram_char_frac: dict[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10})
    bad_phrases: list[str] = field(default_factory=lambda: ["lorem ipsum"])  # C4

    def __post_init__(self) -> None:
        if self.units not in ("words", "chars"):
            raise ValueError(f"filters: units must be 'words' or 'chars', got {self.units!r}")
        self.max_top_ngram_char_frac = {int(k): float(v) for k, v in self.max_top_ngram_char_frac.items()}
        self.max_dup_ngram_char_frac = {int(k): float(v) for k, v in self.max_dup_ngram_char_frac.items()}


def default_filter_configs() -> dict[str, FilterConfig]:
    """Per-language defaults. Korean: eojeol counts (~0.6 English words each), longer mean
    eojeol, no English stop words, bare-jamo cap. ja/zh: character units, n-grams doubled."""
    cjk_chars = dict(units="chars", min_units=100, max_units=300_000, min_mean_word_len=None,
                     max_mean_word_len=None, min_stop_words=None, min_alpha_words=None,
                     max_top_ngram_char_frac={4: 0.2, 6: 0.18, 8: 0.16},
                     max_dup_ngram_char_frac={10: 0.15, 12: 0.14, 14: 0.13, 16: 0.12, 18: 0.11, 20: 0.10})
    return {
        "en": FilterConfig(),
        "ko": FilterConfig(min_units=30, max_units=60_000, min_mean_word_len=1.5, max_mean_word_len=12.0,
                           min_stop_words=None, max_jamo_ratio=0.2),
        "ja": FilterConfig(**cjk_chars),
        "zh": FilterConfig(**cjk_chars),
        "other": FilterConfig(min_stop_words=None),
    }


def make_filter_config(overrides: dict, base: FilterConfig | None = None) -> FilterConfig:
    names = {f.name for f in dataclasses.fields(FilterConfig)}
    for key in overrides:
        if key not in names:
            raise KeyError(f"filters: unknown key {key!r} (known: {sorted(names)})")
    return dataclasses.replace(base or FilterConfig(), **overrides)


def _dup_stats(items: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier one, share of characters in those repeats)."""
    seen: set[str] = set()
    dup_n = dup_chars = 0
    for x in items:
        if x in seen:
            dup_n += 1
            dup_chars += len(x)
        seen.add(x)
    total_chars = sum(map(len, items)) or 1
    return dup_n / max(1, len(items)), dup_chars / total_chars


def _top_ngram_char_frac(units: list[str], n: int, total_chars: int) -> float:
    grams = Counter(tuple(units[i:i + n]) for i in range(len(units) - n + 1))
    if not grams:
        return 0.0
    gram, count = grams.most_common(1)[0]
    return sum(map(len, gram)) * count / total_chars if count > 1 else 0.0


def dup_ngram_char_frac(units: list[str], n: int, total_chars: int) -> float:
    """Gopher: characters covered by n-grams that occur more than once (each position counted once)."""
    if len(units) < n:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    covered = [False] * len(units)
    for i in range(len(units) - n + 1):
        gram = tuple(units[i:i + n])
        if gram in seen:
            for j in range(i, i + n):
                covered[j] = True
        seen.add(gram)
    return sum(len(u) for u, c in zip(units, covered) if c) / total_chars


def check_document(text: str, lang: str, cfg: FilterConfig) -> str | None:
    """Return the first failing rule's name, or None if the document passes."""
    words = text.split()
    units = [c for c in text if not c.isspace()] if cfg.units == "chars" else words
    n = len(units)
    if cfg.min_units is not None and n < cfg.min_units:
        return "too_short"
    if cfg.max_units is not None and n > cfg.max_units:
        return "too_long"
    if words:
        mean_len = sum(map(len, words)) / len(words)
        if cfg.min_mean_word_len is not None and mean_len < cfg.min_mean_word_len:
            return "mean_word_len"
        if cfg.max_mean_word_len is not None and mean_len > cfg.max_mean_word_len:
            return "mean_word_len"
        if cfg.max_symbol_word_ratio is not None and (
                (text.count("#") + text.count("...") + text.count("…")) / len(words) > cfg.max_symbol_word_ratio):
            return "symbol_word_ratio"
        if cfg.min_alpha_words is not None and (
                sum(any(c.isalpha() for c in w) for w in words) / len(words) < cfg.min_alpha_words):
            return "alpha_words"
        if cfg.min_stop_words is not None and lang == "en" and (
                sum(w.lower() in _EN_STOP for w in words) < cfg.min_stop_words):
            return "stop_words"
    chars = [c for c in text if not c.isspace()]
    if cfg.max_symbol_char_ratio is not None and chars and (
            sum(not c.isalnum() for c in chars) / len(chars) > cfg.max_symbol_char_ratio):
        return "symbol_char_ratio"
    if cfg.max_jamo_ratio is not None:
        hangul = sum("\uac00" <= c <= "\ud7a3" or "\u3131" <= c <= "\u318e" for c in chars)
        jamo = sum("\u3131" <= c <= "\u318e" for c in chars)
        if hangul and jamo / hangul > cfg.max_jamo_ratio:
            return "jamo_ratio"
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    if lines:
        if cfg.max_bullet_lines is not None and (
                sum(ln.startswith(_BULLETS) for ln in lines) / len(lines) > cfg.max_bullet_lines):
            return "bullet_lines"
        if cfg.max_ellipsis_lines is not None and (
                sum(ln.endswith(("...", "…")) for ln in lines) / len(lines) > cfg.max_ellipsis_lines):
            return "ellipsis_lines"
        if cfg.min_terminal_lines is not None and (
                sum(ln.endswith(TERMINAL) for ln in lines) / len(lines) < cfg.min_terminal_lines):
            return "terminal_lines"
    lowered = text.lower()
    if any(p in lowered for p in cfg.bad_phrases):
        return "bad_phrase"
    # Gopher repetition rules
    frac, char_frac = _dup_stats(lines)
    if cfg.max_dup_line_frac is not None and frac > cfg.max_dup_line_frac:
        return "dup_lines"
    if cfg.max_dup_line_char_frac is not None and char_frac > cfg.max_dup_line_char_frac:
        return "dup_lines"
    paras = [p.strip() for p in re.split(r"\n{2,}", text) if p.strip()]
    frac, char_frac = _dup_stats(paras)
    if cfg.max_dup_para_frac is not None and frac > cfg.max_dup_para_frac:
        return "dup_paragraphs"
    if cfg.max_dup_para_char_frac is not None and char_frac > cfg.max_dup_para_char_frac:
        return "dup_paragraphs"
    total_chars = sum(map(len, units)) or 1
    for k, limit in cfg.max_top_ngram_char_frac.items():
        if _top_ngram_char_frac(units, k, total_chars) > limit:
            return "top_ngram"
    dup_rules = sorted(cfg.max_dup_ngram_char_frac.items())
    for j, (k, limit) in enumerate(dup_rules):
        frac = dup_ngram_char_frac(units, k, total_chars)
        if frac > limit:
            return "dup_ngram"
        # coverage by repeated n-grams only shrinks as n grows: below every later limit, stop
        if j + 1 < len(dup_rules) and frac <= min(lim for _, lim in dup_rules[j + 1:]):
            break
    return None


class HeuristicFilter(CurationStep):
    """Pipeline step: apply the document's language settings (falling back to "other")."""

    name = "filters"

    def __init__(self, configs: dict[str, FilterConfig] | None = None):
        super().__init__()
        self.configs = configs or default_filter_configs()

    def process(self, doc: Document) -> str | None:
        lang = doc.metadata.get("lang", "other")
        cfg = self.configs.get(lang) or self.configs.get("other") or FilterConfig()
        return check_document(doc.text, lang, cfg)
