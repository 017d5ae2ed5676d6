"""`tokenizer_source`: merging models whose vocabularies differ (mergekit's `tokenizer/build.py`
and `tokenizer/embed.py`, same semantics).

- `base`: the output vocabulary is the base model's tokenizer (or the first model's);
- `union`: the base tokenizer plus every other model's tokens it lacks (added as added tokens,
  then the models' own added/special tokens), as mergekit builds it;
- a model path: that model's tokenizer.
Each input's embedding rows (and lm_head rows) are permuted into the output vocabulary by token
string. A token every input has keeps each input's own row; for a token some input lacks, that
input gets a stand-in row: the only model that has it → its row; the base has it → the base's
row; otherwise the mean over the models that have it; nobody has it → zeros. Then the merge
method runs on the aligned rows as on any tensor.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass

import torch

LOG = logging.getLogger(__name__)


@dataclass
class Vocab:
    tokenizer: object  # the output transformers tokenizer
    perms: dict[str, torch.Tensor]  # model dir → LongTensor [V_out]: its row per output id, −1 if absent
    size: int


def _load(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, use_fast=True)


def _vocab_size(ck_config: dict, tok) -> int:
    return ck_config.get("vocab_size") or len(tok.get_vocab())


def _union(base_tok, toks: dict[str, object], sizes: dict[str, int]):
    out_vocab: dict[str, int] = {}
    added: dict[str, object] = {}
    for m, tok in toks.items():
        dec = tok.added_tokens_decoder
        added_names = {info.content for info in dec.values()}
        # By id: get_vocab()'s order is a Rust hash map's, different in every process (mergekit's
        # union order therefore varies run to run; kollm's is deterministic).
        for t, i in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            if i >= sizes[m] or t in added_names:
                continue
            out_vocab.setdefault(t, len(out_vocab))
        for i, info in dec.items():
            if i < sizes[m]:
                added.setdefault(info.content, info)
    with tempfile.TemporaryDirectory() as d:  # a copy, so the base tokenizer is not mutated
        base_tok.save_pretrained(d)
        res = _load(d)
    base_vocab = base_tok.get_vocab()
    for t in out_vocab:
        if t not in added and t not in base_vocab:
            res.add_tokens(t)
    for info in added.values():
        res.add_tokens(info)
    return res


def build_vocab(source: str, base: str, models: list[str], configs: dict[str, dict]) -> Vocab:
    """The output tokenizer and, for every input model, its row permutation."""
    base_tok = _load(base)
    n = _vocab_size(configs[base], base_tok)
    if any(i >= n for i in base_tok.get_vocab().values()):
        raise ValueError(f"{base}: the tokenizer has ids >= vocab_size {n}; kollm cannot strip them "
                         "(mergekit rewrites the BPE model); use a tokenizer that fits the embeddings")
    toks = {base: base_tok}
    for m in models:
        if m == base:
            continue
        try:
            toks[m] = _load(m)
        except (OSError, ValueError) as e:  # mergekit: assume the base's vocabulary
            LOG.warning("cannot load the tokenizer of %s (%s); assuming the base's", m, e)
    sizes = {m: _vocab_size(configs[m], t) for m, t in toks.items()}
    out = base_tok if source == "base" else _union(base_tok, toks, sizes) if source == "union" else _load(source)
    vocab = out.get_vocab()
    perms = {}
    for m in models:
        mv = (toks.get(m) or base_tok).get_vocab()
        size = configs[m].get("vocab_size") or len(mv)
        p = torch.full((len(vocab),), -1, dtype=torch.long)
        for t, i in vocab.items():
            j = mv.get(t)
            if j is not None and j < size:
                p[i] = j
        perms[m] = p
    return Vocab(out, perms, len(vocab))


def align(tensors: list[torch.Tensor], models: list[str], base: str | None, vocab: Vocab) -> list[torch.Tensor]:
    """Rows of each [V_i, ...] tensor placed at the output ids → [V_out, ...] tensors."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    P = torch.stack([vocab.perms[m] for m in models])  # [n, V]
    present = P >= 0
    count = present.sum(0)
    shape = (vocab.size, *tensors[0].shape[1:])
    missing_somewhere = ~present.all(0)
    # The stand-in row for tokens some input lacks (mergekit's assign_embedding_sources).
    default = torch.zeros(shape, dtype=dtype)
    rows = missing_somewhere & (count > 0)
    done = torch.zeros(vocab.size, dtype=torch.bool)
    single = rows & (count == 1)
    for k, t in enumerate(tensors):  # only one model has it: its row
        sel = single & present[k]
        default[sel] = t[P[k, sel]].to(dtype)
    done |= single
    if base is not None and base in models:
        b = models.index(base)
        sel = rows & ~done & present[b]
        default[sel] = tensors[b][P[b, sel]].to(dtype)
        done |= sel
    avg = rows & ~done
    if avg.any():
        acc = torch.zeros((int(avg.sum()), *shape[1:]), dtype=dtype)
        for k, t in enumerate(tensors):
            sel = present[k, avg]
            idx = P[k, avg][sel]
            acc[sel] = acc[sel] + t[idx].to(dtype)
        default[avg] = acc / count[avg].reshape(-1, *([1] * (len(shape) - 1))).to(dtype)
    out = []
    for k, t in enumerate(tensors):
        new = default.clone()
        own = present[k]
        new[own] = t[P[k, own]].to(dtype)
        out.append(new)
    return out
