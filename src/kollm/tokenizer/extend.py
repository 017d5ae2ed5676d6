"""Vocabulary extension: add N target-language tokens to an existing byte-level BPE tokenizer
(such as Llama 3's `tokenizer.json`) keeping every original id, and resize a model to match.

The new merges continue BPE from where the base tokenizer stops: the target-language text is
pre-tokenized and segmented by the *base* model, and BPE training carries on over those base
tokens (Hugging Face `tokenizers`' trainer does the counting: each base token is written as one
stand-in character, so the trainer's "characters" are the base tokens). Appended merges rank
after every base merge, so at encode time the base segmentation happens first and the new merges
then apply in exactly the order they were learned: what is encoded is what was trained. Merging
the per-language vocabularies after training them independently gives no such guarantee.

`kollm tokenizer train` is this same step applied language after language to a 256-byte base,
which is why a smaller budget is a prefix of a larger one (Trillion §6.3's nested ablation).

Model side: new embedding and LM-head rows start as the mean of the rows of the old tokens each
new token replaces (the usual continual-pretraining initialisation, e.g. Chinese-LLaMA, Swallow).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.models import BPE
from tokenizers.pre_tokenizers import WhitespaceSplit
from tokenizers.trainers import BpeTrainer
from torch import nn


def _stand_in(k: int) -> str:
    # Private-use planes 15 and 16: never whitespace, never in real text; 131,068 code points.
    return chr(0xF0000 + k) if k < 0xFFFE else chr(0x100000 + k - 0xFFFE)


def _repeat(words: Counter, chunk: int = 1 << 16) -> Iterator[str]:
    """Each word as often as it occurs, in bounded strings (the trainer takes no weights)."""
    for w, c in words.items():
        while c > 0:
            yield (w + " ") * min(c, chunk)
            c -= chunk


def load_tokenizer_json(path: str | Path | Tokenizer) -> Tokenizer:
    """A `Tokenizer` from itself, a `tokenizer.json`, or a directory holding one."""
    if isinstance(path, Tokenizer):
        return path
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise FileNotFoundError(f"no tokenizer.json at {path}")
    try:
        return Tokenizer.from_file(str(p))
    except Exception as e:  # tokenizers raises a bare Exception naming no file
        raise ValueError(f"{p}: not a valid tokenizer.json ({str(e).splitlines()[0] if str(e) else type(e).__name__})") \
            from None


def model_vocab(tok: Tokenizer) -> dict[str, int]:
    """The BPE model's own vocabulary (added/special tokens excluded)."""
    return tok.get_vocab(with_added_tokens=False)


def count_pieces(tok: Tokenizer, texts: Iterable[str]) -> Counter:
    """Pre-tokenized pieces (byte-level strings) and how often each occurs."""
    norm, pre = tok.normalizer, tok.pre_tokenizer
    counts: Counter = Counter()
    for text in texts:
        counts.update(piece for piece, _ in pre.pre_tokenize_str(norm.normalize_str(text) if norm else text))
    return counts


def continue_bpe(tok: Tokenizer, pieces: Counter, n_new: int, min_frequency: int = 2) -> tuple[list[str], list[tuple[str, str]]]:
    """Learn merges on top of `tok`'s segmentation of `pieces` until `n_new` tokens not already in
    the vocabulary exist. Returns (new tokens in merge order, merges in rank order). A learned
    merge whose result is already a base token is kept (it lets target text reach that token)
    but does not count against the budget. Fewer than `n_new` come back when the text runs out."""
    vocab = model_vocab(tok)
    id_to_token = {i: t for t, i in vocab.items()}
    code: dict[int, str] = {}
    words: Counter = Counter()
    for piece, count in pieces.items():
        ids = [t.id for t in tok.model.tokenize(piece)]
        if len(ids) > 1:  # a single token cannot be merged further
            words["".join(code.setdefault(i, _stand_in(len(code))) for i in ids)] += count
    decode = {c: id_to_token[i] for i, c in code.items()}

    slack = n_new // 8 + 64  # merges landing on existing tokens do not count; retry if short
    while True:
        trainer = BpeTrainer(vocab_size=len(code) + n_new + slack, min_frequency=min_frequency,
                             show_progress=False, special_tokens=[])
        t = Tokenizer(BPE())
        t.pre_tokenizer = WhitespaceSplit()
        t.train_from_iterator(_repeat(words), trainer)
        learned = json.loads(t.to_str())["model"]["merges"]
        new_tokens: list[str] = []
        merges: list[tuple[str, str]] = []
        seen = set(vocab)
        for m in learned:
            a, b = m if isinstance(m, list) else m.split(" ")
            a, b = "".join(decode[c] for c in a), "".join(decode[c] for c in b)
            merges.append((a, b))
            if a + b not in seen:
                seen.add(a + b)
                new_tokens.append(a + b)
                if len(new_tokens) == n_new:
                    return new_tokens, merges
        if len(t.get_vocab()) < len(code) + n_new + slack or slack > 16 * n_new:
            return new_tokens, merges  # the trainer stopped early: the text has no more pairs
        slack *= 4


def add_to_tokenizer(tok: Tokenizer, new_tokens: list[str], merges: list[tuple[str, str]]) -> Tokenizer:
    """A copy of `tok` with `new_tokens` appended after its largest id (special tokens included,
    so Llama 3's 128,000–128,255 stay put) and `merges` appended after its merges."""
    d = json.loads(tok.to_str())
    vocab = d["model"]["vocab"]
    added = d.get("added_tokens") or []
    next_id = 1 + max([*vocab.values(), *(a["id"] for a in added)])
    for a in added:
        # On loading, tokenizers renumbers an added token that the model vocabulary lacks to
        # len(vocab) + k; listing it there too pins its id once new ids leave a gap before it.
        vocab.setdefault(a["content"], a["id"])
    for i, token in enumerate(new_tokens):
        vocab[token] = next_id + i
    d["model"]["merges"] += [[a, b] for a, b in merges]  # to_str() writes pairs, whatever the file had
    out = Tokenizer.from_str(json.dumps(d, ensure_ascii=False))
    old_vocab, new_vocab = tok.get_vocab(), out.get_vocab()
    moved = [t for t, i in old_vocab.items() if new_vocab.get(t) != i]
    if moved:
        raise ValueError(f"extending would move {len(moved)} token ids (e.g. {moved[0]!r})")
    return out


def extend_tokenizer(tok: Tokenizer, texts: Iterable[str], n_new: int, min_frequency: int = 2) -> tuple[Tokenizer, list[str]]:
    """Add up to `n_new` tokens learned from `texts`; every original id is unchanged."""
    if n_new <= 0:
        raise ValueError(f"number of tokens to add must be positive, got {n_new}")
    new_tokens, merges = continue_bpe(tok, count_pieces(tok, texts), n_new, min_frequency)
    return add_to_tokenizer(tok, new_tokens, merges), new_tokens


@torch.no_grad()
def resize_for_extended_tokenizer(model: nn.Module, old_tok: Tokenizer | str | Path,
                                  new_tok: Tokenizer | str | Path) -> list[int]:
    """Grow a kollm `CausalLM`'s embedding and LM head to `new_tok` and initialise each new row as
    the mean of the rows of the old tokens that spelled it. Tied models stay tied. Returns the
    new token ids. Every old token must keep its id in `new_tok`."""
    old_tok, new_tok = load_tokenizer_json(old_tok), load_tokenizer_json(new_tok)
    old_vocab, new_vocab = old_tok.get_vocab(), new_tok.get_vocab()
    moved = [t for t, i in old_vocab.items() if new_vocab.get(t) != i]
    if moved:
        raise ValueError(f"new tokenizer changes the ids of {len(moved)} old tokens (e.g. {moved[0]!r}); "
                         "it is not an extension of the old one")
    emb = model.model.embed_tokens
    old_n = emb.num_embeddings
    if max(old_vocab.values()) >= old_n:
        raise ValueError(f"old tokenizer has ids up to {max(old_vocab.values())} but the model has {old_n} rows")
    added = sorted((i, t) for t, i in new_vocab.items() if t not in old_vocab)
    new_n = max(old_n, 1 + max(new_vocab.values()))
    tied = model.lm_head.weight is emb.weight

    def grow(old: torch.Tensor) -> torch.Tensor:
        w = old.new_empty(new_n, old.shape[1])
        w[:old_n] = old
        w[old_n:] = old.float().mean(0).to(old.dtype)  # rows for ids no token uses yet
        for i, token in added:
            ids = [t.id for t in old_tok.model.tokenize(token)]
            w[i] = old[ids].float().mean(0).to(old.dtype)
        return w

    new_emb = nn.Embedding(new_n, emb.embedding_dim, device=emb.weight.device, dtype=emb.weight.dtype)
    new_emb.weight.copy_(grow(emb.weight))
    model.model.embed_tokens = new_emb
    if tied:
        model.lm_head.weight = new_emb.weight
    else:
        head = model.lm_head
        new_head = nn.Linear(head.in_features, new_n, bias=False, device=head.weight.device, dtype=head.weight.dtype)
        new_head.weight.copy_(grow(head.weight))
        model.lm_head = new_head
    model.config = model.config.replace(vocab_size=new_n)
    return [i for i, _ in added]
