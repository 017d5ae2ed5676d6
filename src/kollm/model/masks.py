"""Attention-mask policies for packed sequences: causal, document, XLDA (Trillion §2.2).

A policy is one small function of (query index, key index, document ids, language ids). From it
come two back-ends: a FlexAttention `BlockMask` (CUDA, where FlexAttention is fast and has a
backward) and a dense boolean mask for `scaled_dot_product_attention` (CPU). Both read the same
function, so they cannot drift apart.

Two readings of the XLDA mask (docs/design.md quotes the report's sentences):
  * `xlda` (kollm's reading): causal; a token sees its own document and earlier documents of
    *other languages*, never earlier documents of its own language.
  * `xlda_literal` (the report's Figure 2): causal; a token sees its own document and everything
    in earlier *language blocks*, where a language block is a maximal run of consecutive tokens of
    one language; inside a block, documents are isolated as under `document`. The two differ
    when a language comes back after another one ([en a][ko b][en c]: c sees a only here).

Padding: doc_id < 0 marks a pad token. Pads are never attended to; a pad query attends only to
itself so that softmax rows are never empty (no NaN).
"""

from __future__ import annotations

from typing import Literal

import torch

MaskPolicy = Literal["causal", "document", "xlda", "xlda_literal"]
POLICIES: tuple[str, ...] = ("causal", "document", "xlda", "xlda_literal")
ISOLATES_DOCUMENTS = {"causal": False, "document": True, "xlda": True, "xlda_literal": True}


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown attention mask policy {policy!r}; choose one of {', '.join(POLICIES)}")


def language_blocks(lang_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) language ids -> block index per token: 0, 1, ... counting maximal runs of one language."""
    change = torch.zeros_like(lang_ids, dtype=torch.long)
    change[:, 1:] = (lang_ids[:, 1:] != lang_ids[:, :-1]).long()
    return change.cumsum(-1)


def groups(policy: str, lang_ids: torch.Tensor) -> torch.Tensor:
    """What `allows` compares as the token's language: its language, or its language block."""
    return language_blocks(lang_ids) if policy == "xlda_literal" else lang_ids


def allows(policy: str, q_idx, kv_idx, q_doc, kv_doc, q_lang, kv_lang):
    """Whether query q may attend to key kv. Works on broadcastable tensors. `q_lang`/`kv_lang`
    are `groups(policy, lang_ids)`: language ids, or language-block ids for `xlda_literal`."""
    causal = kv_idx <= q_idx
    if policy == "causal":
        allowed = causal
    elif policy == "document":
        allowed = causal & (q_doc == kv_doc)
    elif policy in ("xlda", "xlda_literal"):
        allowed = causal & ((q_doc == kv_doc) | (q_lang != kv_lang))
    else:
        check_policy(policy)
    return (allowed & (kv_doc >= 0)) | (q_idx == kv_idx)


def dense_mask(policy: str, doc_ids: torch.Tensor, lang_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) ids -> (B, 1, T, T) boolean mask, True = may attend (SDPA convention)."""
    check_policy(policy)
    if lang_ids is None:
        lang_ids = torch.zeros_like(doc_ids)
    lang_ids = groups(policy, lang_ids)
    T = doc_ids.shape[-1]
    idx = torch.arange(T, device=doc_ids.device)
    m = allows(
        policy, idx[:, None], idx[None, :],
        doc_ids[:, :, None], doc_ids[:, None, :], lang_ids[:, :, None], lang_ids[:, None, :],
    )
    return m[:, None]


def block_mask(policy: str, doc_ids: torch.Tensor, lang_ids: torch.Tensor | None = None):
    """(B, T) ids -> FlexAttention BlockMask for the same policy."""
    from torch.nn.attention.flex_attention import create_block_mask

    check_policy(policy)
    if lang_ids is None:
        lang_ids = torch.zeros_like(doc_ids)
    lang_ids = groups(policy, lang_ids)
    B, T = doc_ids.shape

    def mask_mod(b, h, q_idx, kv_idx):
        return allows(policy, q_idx, kv_idx, doc_ids[b, q_idx], doc_ids[b, kv_idx], lang_ids[b, q_idx], lang_ids[b, kv_idx])

    return create_block_mask(mask_mod, B, None, T, T, device=doc_ids.device)


def build_mask(policy: str, doc_ids: torch.Tensor, lang_ids: torch.Tensor | None = None, backend: str | None = None):
    """The mask for the attention back-end in use: flex on CUDA, dense on CPU."""
    if backend is None:
        backend = "flex" if doc_ids.is_cuda else "sdpa"
    return block_mask(policy, doc_ids, lang_ids) if backend == "flex" else dense_mask(policy, doc_ids, lang_ids)


def _earlier_same(key: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Per row of (B, T): the number of pairs k < q with key[k] == key[q] and counted[k], without a
    T×T tensor. A stable sort by key keeps positions ascending within a key, so the counted tokens
    before q in sorted order, less those of earlier keys, are q's earlier same-key keys."""
    order = torch.sort(key, dim=-1, stable=True).indices
    k, c = key.gather(-1, order), counted.gather(-1, order).long()
    before = c.cumsum(-1) - c  # counted tokens ahead of each in sorted order, non-decreasing
    start = torch.ones_like(k, dtype=torch.bool)
    start[:, 1:] = k[:, 1:] != k[:, :-1]
    base = torch.where(start, before, 0).cummax(-1).values  # `before` at the start of this key's run
    return (before - base).sum(-1)


def allowed_pairs(policy: str, doc_ids: torch.Tensor, lang_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) number of (query, key) pairs `allows` lets through, counted in O(T log T) from the ids:
    the diagonal (T), plus pairs k < q with a real key that the policy admits. `document`: pairs of
    one document (Σ n_d(n_d − 1)/2 for documents of n_d tokens); `xlda`: the earlier real keys, less
    those of the query's language (or language block) from another document."""
    check_policy(policy)
    B, T = doc_ids.shape
    real = doc_ids >= 0
    n = torch.full((B,), T, dtype=torch.long, device=doc_ids.device)
    if policy == "causal":
        return n + _earlier_same(torch.zeros_like(doc_ids), real)
    if policy == "document":
        return n + _earlier_same(doc_ids, real)
    g = groups(policy, torch.zeros_like(doc_ids) if lang_ids is None else lang_ids)
    g = g - g.min()
    both = (doc_ids - doc_ids.min()) * (int(g.max()) + 1) + g  # (document, language) as one key
    return n + _earlier_same(torch.zeros_like(doc_ids), real) - _earlier_same(g, real) + _earlier_same(both, real)


def block_nonempty(policy: str, doc_ids: torch.Tensor, lang_ids: torch.Tensor | None = None,
                   block: int = 128) -> torch.Tensor:
    """(B, nb, nb) bool: the `block`×`block` tiles with at least one allowed pair, the tiles
    FlexAttention computes (its BlockMask at the default 128); from per-tile document presence, not
    the T×T matrix. Above the diagonal nothing, on it always the diagonal; below it a tile is
    non-empty if it has a real key and (`causal`) always, (`document`) a document shared with the
    query tile, (`xlda`) that or a query/key pair of different languages (language blocks)."""
    import torch.nn.functional as F

    check_policy(policy)
    B, T = doc_ids.shape
    nb = -(-T // block)
    dev = doc_ids.device
    tiled = lambda t, value: F.pad(t, (0, nb * block - T), value=value).view(B, nb, block)  # noqa: E731
    real = tiled(doc_ids >= 0, False)  # real keys (the padding up to whole tiles is not a token)
    has_real = real.any(-1)
    below = torch.ones(nb, nb, dtype=torch.bool, device=dev).tril(-1)
    diagonal = torch.eye(nb, dtype=torch.bool, device=dev).expand(B, nb, nb)
    if policy == "causal":
        return diagonal | (below & has_real[:, None, :])
    # document presence per tile (queries: every token; keys: real ones), one (B, nb, nb) product
    uniq, inv = torch.unique(doc_ids, return_inverse=True)
    tile = (torch.arange(T, device=dev) // block).expand(B, T)
    row = torch.arange(B, device=dev)[:, None].expand(B, T)
    present_q = torch.zeros(B, nb, len(uniq), device=dev)
    present_q[row, tile, inv] = 1.0
    present_k = torch.zeros_like(present_q)
    keep = doc_ids >= 0
    present_k[row[keep], tile[keep], inv[keep]] = 1.0
    ok = (present_q @ present_k.transpose(1, 2)) > 0  # a document with a query in one tile, a real key in the other
    if policy in ("xlda", "xlda_literal"):  # or a query and a real key of different languages
        g = groups(policy, torch.zeros_like(doc_ids) if lang_ids is None else lang_ids)
        big = torch.iinfo(g.dtype).max
        token = tiled(torch.ones_like(doc_ids, dtype=torch.bool), False)
        gt = tiled(g, 0)
        q_lo, q_hi = torch.where(token, gt, big).amin(-1), torch.where(token, gt, -big).amax(-1)
        k_lo, k_hi = torch.where(real, gt, big).amin(-1), torch.where(real, gt, -big).amax(-1)
        one_lang = (q_lo == q_hi)[:, :, None] & (k_lo == k_hi)[:, None, :] & (q_lo[:, :, None] == k_lo[:, None, :])
        ok = ok | (has_real[:, None, :] & ~one_lang)
    return diagonal | (below & ok)


def sparsity(policy: str, doc_ids: torch.Tensor, lang_ids: torch.Tensor | None = None,
             block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row (B,): the fraction of the T×T attention matrix the policy masks out (causal alone:
    (T − 1)/2T, about half), and the fraction of `block`-tiles FlexAttention skips
    (`BlockMask.sparsity()` / 100 for the same policy). Cheap at 32K: no T×T tensor."""
    T = doc_ids.shape[-1]
    elems = 1.0 - allowed_pairs(policy, doc_ids, lang_ids).double() / (T * T)
    tiles = block_nonempty(policy, doc_ids, lang_ids, block)
    return elems.float(), 1.0 - tiles.flatten(1).float().mean(-1)
