"""Mask policies: the vectorised policy against a direct O(T²) reading of its definition, and
the FlexAttention BlockMask back-end against the dense SDPA back-end."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kollm.model.masks import POLICIES, block_mask, dense_mask, language_blocks


def blocks_by_hand(lang):
    """Language block of each position: a new block wherever the language differs from the left."""
    out, b = [], 0
    for i, x in enumerate(lang):
        b += i > 0 and x != lang[i - 1]
        out.append(b)
    return out


def reference(policy, doc, lang):
    """Read the definitions literally, one (query, key) pair at a time."""
    T = len(doc)
    m = torch.zeros(T, T, dtype=torch.bool)
    block = blocks_by_hand(lang)
    for q in range(T):
        for k in range(T):
            if q == k:
                m[q, k] = True  # a token always sees itself (also keeps pad rows finite)
                continue
            if k > q or doc[k] < 0:
                continue
            if policy == "causal":
                m[q, k] = True
            elif policy == "document":
                m[q, k] = doc[q] == doc[k]
            elif policy == "xlda":
                # own document, or an earlier document of another language
                m[q, k] = doc[q] == doc[k] or lang[q] != lang[k]
            elif policy == "xlda_literal":
                # own document, or anything in an earlier language block (Figure 2)
                m[q, k] = doc[q] == doc[k] or block[q] != block[k]
    return m


@st.composite
def packings(draw):
    """A packed sequence: consecutive documents, each with one language, optional left padding."""
    n_docs = draw(st.integers(1, 6))
    lens = [draw(st.integers(1, 9)) for _ in range(n_docs)]
    langs = [draw(st.integers(0, 2)) for _ in range(n_docs)]
    pad = draw(st.integers(0, 3))
    doc = [-1] * pad + [i for i, n in enumerate(lens) for _ in range(n)]
    lang = [0] * pad + [langs[i] for i, n in enumerate(lens) for _ in range(n)]
    return doc, lang


@settings(max_examples=150, deadline=None)
@given(packings(), st.sampled_from(POLICIES))
def test_dense_mask_equals_definition(packing, policy):
    doc, lang = packing
    got = dense_mask(policy, torch.tensor([doc]), torch.tensor([lang]))[0, 0]
    assert torch.equal(got, reference(policy, doc, lang))


def test_policies_differ_where_they_should():
    # en doc 0, ko doc 1, en doc 2: xlda lets doc 2 see ko doc 1 but not en doc 0.
    doc = torch.tensor([[0, 0, 1, 1, 2, 2]])
    lang = torch.tensor([[0, 0, 1, 1, 0, 0]])
    x = dense_mask("xlda", doc, lang)[0, 0]
    assert x[4, 2] and x[4, 3] and not x[4, 0] and not x[4, 1]
    d = dense_mask("document", doc, lang)[0, 0]
    assert not d[4, 2] and d[5, 4]
    assert torch.equal(dense_mask("causal", doc, lang)[0, 0], torch.ones(6, 6, dtype=torch.bool).tril())


def test_literal_figure_reading_differs_from_kollm_xlda_only_when_a_language_returns():
    # [en a a][en b][ko c c][en d d]: blocks 0 0 0 1 1 2 2 (a and b share the first en block)
    doc = torch.tensor([[0, 0, 1, 2, 2, 3, 3]])
    lang = torch.tensor([[0, 0, 0, 1, 1, 0, 0]])
    assert language_blocks(lang).tolist() == [[0, 0, 0, 1, 1, 2, 2]]
    lit, x = dense_mask("xlda_literal", doc, lang)[0, 0], dense_mask("xlda", doc, lang)[0, 0]
    # d (block 2) sees a and b (block 0) under the figure's reading, not under kollm's
    assert lit[5, 0] and lit[5, 2] and not x[5, 0] and not x[5, 2]
    # inside one language block documents stay isolated under both: b never sees a
    assert not lit[2, 0] and not x[2, 0]
    # ko c sees the English block before it under both
    assert lit[3, 0] and x[3, 0] and lit[4, 2] and x[4, 2]
    # where no language comes back the two are one mask
    assert torch.equal(dense_mask("xlda_literal", doc[:, :5], lang[:, :5]), dense_mask("xlda", doc[:, :5], lang[:, :5]))


@settings(max_examples=100, deadline=None)
@given(packings())
def test_policy_order_by_what_they_allow(packing):
    """document ⊆ xlda ⊆ xlda_literal ⊆ causal, on any packing."""
    doc, lang = (torch.tensor([x]) for x in packing)
    d, x, lit, c = (dense_mask(p, doc, lang) for p in ("document", "xlda", "xlda_literal", "causal"))
    assert not (d & ~x).any() and not (x & ~lit).any() and not (lit & ~c).any()


def test_unknown_policy_is_error():
    with pytest.raises(ValueError, match="unknown attention mask policy 'sliding'"):
        dense_mask("sliding", torch.zeros(1, 4, dtype=torch.long))


@pytest.mark.parametrize("policy", POLICIES)
def test_flex_block_mask_agrees_with_dense_sdpa(policy):
    g = torch.Generator().manual_seed(0)
    B, T, H, KV, D = 2, 160, 4, 2, 16  # T not a multiple of the 128 block: exercises partial blocks
    doc = torch.sort(torch.randint(0, 7, (B, T), generator=g), dim=1).values
    doc[1, :5] = -1  # left padding in one row
    lang = (doc * 7 + 3) % 3
    q = torch.randn(B, H, T, D, generator=g)
    k, v = torch.randn(B, KV, T, D, generator=g), torch.randn(B, KV, T, D, generator=g)
    from torch.nn.attention.flex_attention import flex_attention

    flex = flex_attention(q, k, v, block_mask=block_mask(policy, doc, lang), enable_gqa=True)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(policy, doc, lang), enable_gqa=True)
    torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-5)


def test_model_forward_same_with_either_backend():
    from kollm.model import build_model, get_preset

    torch.manual_seed(0)
    model = build_model(get_preset("tiny")).eval()
    T = 64
    ids = torch.randint(0, 512, (2, T))
    doc = torch.sort(torch.randint(0, 5, (2, T)), dim=1).values
    lang = doc % 2
    with torch.no_grad():
        a = model(ids, attn_mask=block_mask("xlda", doc, lang)).logits
        b = model(ids, attn_mask=dense_mask("xlda", doc, lang)).logits
        c = model(ids, doc_ids=doc, lang_ids=lang, mask_policy="xlda").logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.equal(b, c)
