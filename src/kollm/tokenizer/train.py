"""Bilingual byte-level BPE with per-language vocabulary budgets (Trillion §3.5, §6.3).

Trillion 7B's tokenizer has 128,256 byte-level BPE tokens: about 100,000 English, 24,552 Korean,
the rest other languages, trained with Hugging Face `tokenizers`. Its vocabulary ablation needs
Korean budgets that are subsets of one another (1.5K ⊂ 5K ⊂ 13K ⊂ 24.5K) with everything else
fixed. Here the vocabulary is grown one language at a time, in priority order, from the 256
byte tokens: each language continues BPE on its own text over the segmentation the earlier
languages give it (`extend.continue_bpe`), and contributes its first `budget` *new* tokens in
merge order. Ids are therefore laid out as [bytes | lang 1 | lang 2 | ... | special tokens], a
smaller budget is a prefix of a larger one, and the merge list is exactly the order in which the
merges were learned, so the tokenizer encodes each language with the vocabulary trained for it.

Pre-tokenization is Llama 3's regex + byte-level mapping; special tokens, BOS post-processing
and the chat template are Llama 3's, so `transformers` loads the directory as a
`PreTrainedTokenizerFast` and `apply_chat_template` works.
"""

from __future__ import annotations

import glob
import hashlib
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.processors import TemplateProcessing

from kollm.data.chat import DEFAULT_CHAT_TEMPLATE
from kollm.data.documents import JSONL_SUFFIXES, PARQUET_SUFFIXES, iter_rows
from kollm.tokenizer.extend import add_to_tokenizer, continue_bpe, count_pieces

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
SPECIAL_TOKENS = [BOS, EOS, "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", PAD]
# Llama 3's template with {% generation %} around assistant replies (kollm.data.chat).
CHAT_TEMPLATE = DEFAULT_CHAT_TEMPLATE


@dataclass
class TokenizerConfig:
    budgets: dict[str, int]  # language -> new tokens it contributes; insertion order = priority
    series: dict[str, list[int]] = field(default_factory=dict)  # language -> smaller nested budgets
    vocab_size: int | None = None  # pad with reserved special tokens up to this size
    min_frequency: int = 2

    def __post_init__(self) -> None:
        if not self.budgets:
            raise ValueError("no language budgets given (e.g. --budget en=100000 --budget ko=24552)")
        for lang, n in self.budgets.items():
            if n <= 0:
                raise ValueError(f"budget for {lang!r} must be positive, got {n}")
        last = list(self.budgets)[-1]
        for lang, sizes in self.series.items():
            if lang not in self.budgets:
                raise KeyError(f"series language {lang!r} has no budget")
            if lang != last:
                # Later languages are trained on top of this one's tokens; truncating it would
                # strand their merges. The ablated language goes last (others stay fixed).
                raise ValueError(f"series language {lang!r} must be the last in budget order (last is {last!r})")
            if any(not 0 < k < self.budgets[lang] for k in sizes):
                raise ValueError(f"series sizes for {lang!r} must lie in (0, {self.budgets[lang]}), got {sizes}")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character map used by byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def byte_level_base() -> Tokenizer:
    """256 byte tokens (id = byte value), no merges, Llama 3 pre-tokenization."""
    vocab = {ch: b for b, ch in bytes_to_unicode().items()}
    tok = Tokenizer(BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def add_special_tokens(tok: Tokenizer, vocab_size: int | None = None) -> Tokenizer:
    """Append the special tokens (and reserved ones up to `vocab_size`) after the BPE vocabulary
    and prepend BOS on encode, as Llama 3 does."""
    tok = Tokenizer.from_str(tok.to_str())
    specials = list(SPECIAL_TOKENS)
    n = tok.get_vocab_size(with_added_tokens=False)
    if vocab_size is not None:
        if vocab_size < n + len(specials):
            raise ValueError(f"vocab_size {vocab_size} < {n} BPE tokens + {len(specials)} special tokens")
        specials += [f"<|reserved_special_token_{i}|>" for i in range(vocab_size - n - len(specials))]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.post_processor = TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return tok


def tokenizer_hash(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()[:16]


def _cut(merges: list[tuple[str, str]], vocab: set[str], k: int) -> int:
    """Number of merges up to and including the one that creates the k-th new token."""
    seen = set(vocab)
    for i, (a, b) in enumerate(merges):
        if a + b not in seen:
            seen.add(a + b)
            k -= 1
            if k == 0:
                return i + 1
    return len(merges)


def train(texts: dict[str, list[str]], cfg: TokenizerConfig) -> tuple[Tokenizer, dict, dict[str, Tokenizer]]:
    """Train the tokenizer. Returns (tokenizer, summary, {"ko-1536": nested smaller tokenizer, ...})."""
    missing = [lang for lang in cfg.budgets if not texts.get(lang)]
    if missing:
        raise ValueError(f"no training text for language(s) {missing}; have {sorted(k for k in texts if texts[k])}")
    tok = byte_level_base()
    languages, nested = [], {}
    for lang, budget in cfg.budgets.items():
        new_tokens, merges = continue_bpe(tok, count_pieces(tok, texts[lang]), budget, cfg.min_frequency)
        for k in cfg.series.get(lang, []):
            cut = _cut(merges, set(tok.get_vocab()), k)
            nested[f"{lang}-{k}"] = add_special_tokens(add_to_tokenizer(tok, new_tokens[:k], merges[:cut]))
        first_id = tok.get_vocab_size()
        tok = add_to_tokenizer(tok, new_tokens, merges)
        languages.append({"lang": lang, "budget": budget, "added": len(new_tokens),
                          "ids": [first_id, first_id + len(new_tokens)], "merges": len(merges),
                          "docs": len(texts[lang])})
    tok = add_special_tokens(tok, cfg.vocab_size)
    summary = {"vocab_size": tok.get_vocab_size(), "languages": languages, "min_frequency": cfg.min_frequency,
               "special_tokens": {s: tok.token_to_id(s) for s in SPECIAL_TOKENS}}
    return tok, summary, nested


def save(tok: Tokenizer, out_dir: str | Path, summary: dict | None = None) -> Path:
    """Write tokenizer.json, tokenizer_config.json (with the chat template) and
    kollm_tokenizer.json (budgets, id ranges, hash): a directory transformers loads as is."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
        "chat_template": CHAT_TEMPLATE, "model_max_length": 1 << 20, "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    meta = {**(summary or {}), "vocab_size": tok.get_vocab_size(), "tokenizer_hash": tokenizer_hash(tok)}
    (out / "kollm_tokenizer.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return out


def _plain_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8", errors="strict") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def read_texts(specs: list[str]) -> tuple[dict[str, list[str]], Counter]:
    """`LANG=PATH` (every text in PATH is LANG; plain-text files give one document per line) or
    `PATH` (JSONL/Parquet documents, grouped by their `lang` field). PATH may be a glob or a
    directory. Returns texts per language and counts of malformed rows (logged with file:line)."""
    texts: dict[str, list[str]] = {}
    bad: Counter = Counter()
    for spec in specs:
        lang, _, path = spec.rpartition("=")
        files = sorted(str(q) for q in Path(path).rglob("*") if q.is_file()) if Path(path).is_dir() \
            else sorted(glob.glob(path))
        if not files:
            raise FileNotFoundError(f"no files match {path!r}")
        for f in files:
            if not f.endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES):
                if not lang:
                    raise ValueError(f"{f}: plain-text input needs a language, e.g. ko={f}")
                try:
                    texts.setdefault(lang, []).extend(_plain_lines(f))
                except UnicodeDecodeError as e:
                    raise ValueError(f"{f}: not UTF-8 text ({e})") from e
                continue
            for line, row, reason in iter_rows(f):
                row_lang = lang or (row or {}).get("lang")
                if row is None or not row_lang:
                    reason = reason or "no_lang"
                    bad[reason.split(":")[0].split(" ")[0]] += 1
                    print(f"{f}:{line}: malformed row ({reason})", file=sys.stderr)
                    continue
                texts.setdefault(row_lang, []).append(row["text"])
    return texts, bad
