"""Tokenizer efficiency per language: tokens per character, tokens per word, bytes per token and
encode throughput (the measures behind Trillion §3.5 / Fig. 5: fewer Korean tokens per character
means more Korean text per context and faster Korean inference).

Words are whitespace-separated; characters are Unicode code points; bytes are UTF-8. Special
tokens are not counted. Throughput is one `encode_batch` pass over the texts after a warm-up.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from tokenizers import Tokenizer


@dataclass
class LangStats:
    lang: str
    docs: int
    chars: int
    words: int
    bytes: int
    tokens: int
    tokens_per_char: float
    tokens_per_word: float
    bytes_per_token: float
    tokens_per_second: float

    def to_dict(self) -> dict:
        return asdict(self)


def measure(tok: Tokenizer, texts: list[str], lang: str = "") -> LangStats:
    if not texts:
        raise ValueError(f"no texts to measure for {lang or 'language'}")
    tok.encode_batch_fast(texts[:64], add_special_tokens=False)  # warm-up: thread pool, caches
    t0 = time.perf_counter()
    encodings = tok.encode_batch_fast(texts, add_special_tokens=False)
    seconds = time.perf_counter() - t0
    tokens = sum(len(e.ids) for e in encodings)
    chars = sum(map(len, texts))
    words = sum(len(t.split()) for t in texts)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    return LangStats(lang=lang, docs=len(texts), chars=chars, words=words, bytes=nbytes, tokens=tokens,
                     tokens_per_char=tokens / max(chars, 1), tokens_per_word=tokens / max(words, 1),
                     bytes_per_token=nbytes / max(tokens, 1), tokens_per_second=tokens / max(seconds, 1e-9))


def table(rows: list[tuple[str, LangStats]]) -> str:
    """Markdown table of (tokenizer name, stats) rows."""
    head = "| tokenizer | lang | docs | tokens | tokens/char | tokens/word | bytes/token | tokens/s |"
    lines = [head, "|" + "---|" * 8]
    for name, s in rows:
        lines.append(f"| {name} | {s.lang} | {s.docs} | {s.tokens} | {s.tokens_per_char:.4f} | "
                     f"{s.tokens_per_word:.3f} | {s.bytes_per_token:.3f} | {s.tokens_per_second:,.0f} |")
    return "\n".join(lines)
