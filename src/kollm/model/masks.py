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
