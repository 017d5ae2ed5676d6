"""Mask sparsity from the ids (kollm.model.masks.sparsity, logged as `attn_sparsity` and
`attn_block_sparsity`): the O(T log T) pair count equals the dense T×T mask's count for every
policy, on packed rows (contiguous documents, trailing padding) and on arbitrary ids; the tile count
equals the dense mask reduced to 128-tiles and FlexAttention's own BlockMask; and a hand count."""

import pytest
import torch

from kollm.model.masks import POLICIES, allowed_pairs, block_mask, block_nonempty, dense_mask, sparsity


def packed(B: int, T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of contiguous documents (random lengths, a random language each) and trailing pads."""
    g = torch.Generator().manual_seed(seed)
    docs, langs = torch.full((B, T), -1), torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        pos, d, end = 0, 0, T - int(torch.randint(0, 40, (1,), generator=g))
        while pos < end:
            n = min(int(torch.randint(1, 90, (1,), generator=g)), end - pos)
            docs[b, pos:pos + n], langs[b, pos:pos + n] = d, int(torch.randint(0, 3, (1,), generator=g))
            pos, d = pos + n, d + 1
    return docs, langs


def arbitrary(B: int, T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids in any order: a document split in pieces, pads in the middle, languages mixed in a document."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-1, 4, (B, T), generator=g), torch.randint(0, 2, (B, T), generator=g)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("make", [packed, arbitrary])
def test_pair_count_equals_dense_mask(policy, make):
    docs, langs = make(3, 300, seed=POLICIES.index(policy))
    dense = dense_mask(policy, docs, langs)[:, 0]
    assert allowed_pairs(policy, docs, langs).tolist() == dense.sum((1, 2)).tolist()
    # tiles of 128 (300 tokens: the last tile partial), against the dense mask reduced per tile
    pad = torch.nn.functional.pad(dense, (0, 84, 0, 84))
    tiles = pad.view(3, 3, 128, 3, 128).any(4).any(2)
    assert torch.equal(block_nonempty(policy, docs, langs), tiles)


@pytest.mark.parametrize("policy", ["document", "xlda", "xlda_literal"])
def test_tile_sparsity_is_flex_attentions(policy):
    docs, langs = packed(2, 512, seed=7)
    docs[:, :200] = torch.arange(200) // 100  # two documents of 100 then ...
    _, tiles = sparsity(policy, docs, langs)
    assert tiles.mean().item() * 100 == pytest.approx(block_mask(policy, docs, langs).sparsity())


def test_hand_count():
    # document mask, documents of 100 and 156 tokens: 100·101/2 + 156·157/2 = 5,050 + 12,246 pairs
    docs = torch.tensor([[0] * 100 + [1] * 156])
    elems, tiles = sparsity("document", docs)
    assert elems.item() == pytest.approx(1 - 17_296 / 256**2)
    assert tiles.item() == 0.25  # 2×2 tiles: the one above the diagonal is empty, the one below is not
    elems, _ = sparsity("causal", docs)
    assert elems.item() == pytest.approx(1 - (256 * 257 / 2) / 256**2)  # (T − 1)/2T
    # xlda: the second document (another language) also sees the whole first one: + 156·100 pairs
    elems, _ = sparsity("xlda", docs, docs)
    assert elems.item() == pytest.approx(1 - (17_296 + 15_600) / 256**2)
