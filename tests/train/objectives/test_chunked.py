"""The chunked LM head + loss equals the dense path: loss and gradients, fp32 and bf16."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kollm.train.objectives import chunked
from kollm.train.objectives.chunked import IGNORE, chunked_tokens, linear_cross_entropy, token_logprobs


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 64 * 200)  # 64 tokens a chunk: several chunks, a ragged last
    assert chunked.chunk_rows(200) == 64


def _data(n=300, d=32, v=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(v, d, generator=g, dtype=torch.float64) * 0.3
    tgt = torch.randint(0, v, (n,), generator=g)
    tgt[::7] = IGNORE
    return h, w, tgt


def _grads(fn, h, w):
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    out = fn(h, w)
    (out * 0.37).backward()  # a scale, as the trainer's 1/total · world
    return out.detach(), h.grad, w.grad


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_linear_cross_entropy_equals_dense_fp32(small_chunks):
    h, w, tgt = (x.float() if x.is_floating_point() else x for x in _data())
    dense = lambda h, w: F.cross_entropy(h @ w.t(), tgt, ignore_index=IGNORE, reduction="sum")  # noqa: E731
    fused = lambda h, w: linear_cross_entropy(h, w, tgt)[0]  # noqa: E731
    (ld, ghd, gwd), (lc, ghc, gwc) = _grads(dense, h, w), _grads(fused, h, w)
    assert _rel(lc, ld) < 1e-6 and _rel(ghc, ghd) < 1e-5 and _rel(gwc, gwd) < 1e-5
    # per-token values and log Z, 0 where ignored
    _, ce, lse = linear_cross_entropy(h, w, tgt)
    ref = F.cross_entropy(h @ w.t(), tgt, ignore_index=IGNORE, reduction="none")
    assert torch.allclose(ce, ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(lse[tgt != IGNORE], torch.logsumexp(h @ w.t(), -1)[tgt != IGNORE], rtol=1e-6)
    assert (lse[tgt == IGNORE] == 0).all()


def test_linear_cross_entropy_in_float64_is_exact(small_chunks):
    """The same maths as the dense path: in float64 they agree to rounding."""
    h, w, tgt = _data()
    dense = lambda h, w: F.cross_entropy(h @ w.t(), tgt, ignore_index=IGNORE, reduction="sum")  # noqa: E731
    fused = lambda h, w: linear_cross_entropy(h, w, tgt)[0]  # noqa: E731
    for a, b in zip(_grads(dense, h, w), _grads(fused, h, w)):
        assert _rel(b, a) < 1e-12


def test_linear_cross_entropy_bf16_autocast_matches_dense(small_chunks):
    """Under bf16 autocast both paths run the head matmul in bf16 and the loss in fp32: the loss
    within 1e-3 relative, gradients within 2e-2 (bf16's 8-bit mantissa, one rounding of the
    logits' gradient before each matmul; the chunks' sums are accumulated in another order)."""
    h, w, tgt = (x.float() if x.is_floating_point() else x for x in _data())
    dense = lambda h, w: F.cross_entropy((h @ w.t()).float(), tgt, ignore_index=IGNORE, reduction="sum")  # noqa: E731
    fused = lambda h, w: linear_cross_entropy(h, w, tgt)[0]  # noqa: E731
    with torch.autocast("cpu", torch.bfloat16):
        d, c = _grads(dense, h, w), _grads(fused, h, w)
    assert _rel(c[0], d[0]) < 1e-3
    assert _rel(c[1], d[1]) < 2e-2 and _rel(c[2], d[2]) < 2e-2
    assert c[1].dtype == c[2].dtype == torch.float32  # gradients in the parameters' dtype


def test_linear_cross_entropy_bf16_params(small_chunks):
    """FSDP2's bf16 parameters: bf16 in, bf16 gradients, loss against the fp32 dense reference."""
    h, w, tgt = _data()
    ref = _grads(lambda h, w: F.cross_entropy(h @ w.t(), tgt, ignore_index=IGNORE, reduction="sum"), h, w)
    c = _grads(lambda h, w: linear_cross_entropy(h, w, tgt)[0], h.bfloat16(), w.bfloat16())
    assert c[1].dtype == torch.bfloat16 and c[2].dtype == torch.bfloat16
    assert _rel(c[0], ref[0]) < 1e-2 and _rel(c[1], ref[1]) < 3e-2 and _rel(c[2], ref[2]) < 3e-2


def test_token_logprobs_chunked_equals_dense(small_chunks):
    """DPO's and GRPO's per-token log-probs (checkpointed chunks), with a temperature and a
    non-uniform weight per token (what the fused sum cannot do)."""
    h, w, tgt = _data()
    tgt = tgt.clamp(min=0)
    wt = torch.linspace(-1, 2, tgt.shape[0], dtype=torch.float64)
    dense = lambda h, w: ((h @ w.t() / 0.7).log_softmax(-1).gather(-1, tgt[:, None]).squeeze(-1).exp() * wt).sum()  # noqa: E731
    chunk = lambda h, w: (token_logprobs(h, w, tgt, temperature=0.7).exp() * wt).sum()  # noqa: E731
    for a, b in zip(_grads(dense, h, w), _grads(chunk, h, w)):
        assert _rel(b, a) < 1e-12


def test_chunked_tokens_keeps_no_logits(small_chunks):
    """What the checkpointed chunks keep for backward: their inputs, no (tokens, V) tensor."""
    h, w, tgt = _data(n=640, v=200)
    h, w = h.float().requires_grad_(), w.float().requires_grad_()
    big = []

    def pack(t):
        if t.shape[-1] == 200:  # (tokens, V): logits or their log-softmax
            big.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chunked_tokens(lambda x, w, t: F.cross_entropy(x @ w.t(), t.clamp(min=0), reduction="none"), h, w, tgt)
        linear_cross_entropy(h, w, tgt)
    assert big == []
