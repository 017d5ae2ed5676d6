"""Compiled FlexAttention (`torch.compile(flex_attention)`, what the model uses on CUDA) on CPU:
its forward equals SDPA with the dense mask of the same policy, and the block mask's sparsity is
the hand count. One compile (~17 s on this CPU), so one policy: `document`, two documents of 128
tokens; the backward and the other policies run on the GPU in bench/gpu_check.sh."""

import torch
import torch.nn.functional as F

from kollm.model.masks import block_mask, dense_mask


def test_compiled_flex_equals_dense_sdpa_on_cpu():
    from torch.nn.attention.flex_attention import flex_attention

    torch.manual_seed(0)
    B, H, KV, T, D = 2, 4, 2, 256, 16
    doc = torch.cat([torch.zeros(B, 128), torch.ones(B, 128)], 1).long()
    doc[1, 200:] = 2  # a third document in the second row
    q, k, v = torch.randn(B, H, T, D), torch.randn(B, KV, T, D), torch.randn(B, KV, T, D)
    bm = block_mask("document", doc, doc * 0)
    # 128×128 blocks, 2×2 per row: above the diagonal empty (causal), below it empty (the second
    # document never sees the first): 2 of 4 blocks empty in both rows
    assert bm.sparsity() == 50.0
    y = torch.compile(flex_attention, dynamic=False)(q, k, v, block_mask=bm, enable_gqa=True)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask("document", doc, doc * 0), enable_gqa=True)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
