"""Unicode normalisation that is safe for Hangul.

NFC, never NFKC/NFKD: NFKC maps Hangul *compatibility* jamo (ㅋ U+314B, the "ㅋㅋㅋ" of Korean
web text) to *conjoining* jamo, which then fuse with a following vowel into different syllables,
and NFD/NFKD split every syllable into jamo. NFC composes stray conjoining jamo into syllables
and leaves compatibility jamo alone. On top of NFC: full-width ASCII folds to ASCII (the one
compatibility mapping that is safe and common in CJK text), exotic spaces become ' ', control
and invisible format characters go (ZWJ stays: it joins emoji), CRLF becomes LF, runs of spaces
collapse, and more than one blank line collapses to one. This is the normalisation step that the
Trillion and DNA reports leave implicit; datatrove's own normaliser targets dedup keys, not text.
"""

from __future__ import annotations

import re
import unicodedata

from datatrove.data import Document

from kollm.data.stats import CurationStep

# Full-width ASCII (U+FF01..U+FF5E) -> ASCII; the ideographic space is handled with the other spaces.
_FULLWIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)}
_SPACES = "\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
_DROP = "\u00ad\u200b\u200c\u200e\u200f\u2060\ufeff"  # soft hyphen, zero-width (non-)joiners bar ZWJ, marks, BOM
_TABLE = (
    _FULLWIDTH
    | {ord(c): " " for c in _SPACES + "\t\v\f"}
    | {ord(c): None for c in _DROP}
    | {ord("\u2028"): "\n", ord("\u2029"): "\n\n"}
)
# C0/C1 controls except newline (tabs and form feeds were mapped to spaces above).
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
_SPACE_RUN = re.compile(r" {2,}")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_text(text: str, fold_fullwidth: bool = True) -> str:
    """NFC + whitespace/control clean-up; idempotent (normalize(normalize(x)) == normalize(x))."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", text)
    table = _TABLE if fold_fullwidth else {k: v for k, v in _TABLE.items() if k not in _FULLWIDTH}
    text = _CONTROL.sub("", text.translate(table))
    lines = [_SPACE_RUN.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


class Normalize(CurationStep):
    """Pipeline step: normalise `doc.text`; a document that becomes empty is dropped ("empty")."""

    name = "normalize"

    def __init__(self, fold_fullwidth: bool = True):
        super().__init__()
        self.fold_fullwidth = fold_fullwidth

    def process(self, doc: Document) -> str | None:
        doc.text = normalize_text(doc.text, self.fold_fullwidth)
        return None if doc.text else "empty"
