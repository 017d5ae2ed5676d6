"""Chunked LM head + loss: the [tokens, vocabulary] logits never exist at once.

At 32,768 tokens × 128,256 vocabulary the dense loss keeps 16.8 GB of fp32 log-softmax for
backward, plus the bf16 logits and their fp32 copy while they are made, per head (next token and
MTP): 59.9 GB of trillion-7b's 32K phase (docs/memory-plan.md). Here the head's matmul and the
loss run over chunks of CHUNK_ELEMENTS // V tokens, two ways:

- `linear_cross_entropy`: the *summed* cross entropy of the head's logits against targets, as one
  autograd Function that computes the gradients of the sum with respect to the hidden states and
  the head weight chunk by chunk in forward and keeps only those (Liger Kernel's fused linear
  cross entropy, Hsu et al. 2024). Backward scales them by the incoming scalar, so the head costs
  the dense path's three matmuls. Right for a loss that is a weighted sum of per-token cross
  entropies with one weight for every target: next-token, MTP and SFT losses.
- `chunked_tokens`: any per-token function of a chunk of hidden states, the head weight and
  per-token arguments (DPO's and GRPO's log-probs, distillation's divergence), each chunk under
  non-reentrant activation checkpointing: backward recomputes one chunk's logits at a time (one
  more head matmul than dense: four instead of three).

The logits are computed as the dense path computes them (under autocast: bf16 matmul, fp32 loss
math), so loss and gradients equal the dense path's up to summation order
(tests/train/objectives/test_chunked.py); on CPU under bf16 the head weight's gradient comes from
the fp32 softmax gradient (CPU emulates bf16 matmuls), nearer fp32 than the dense path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from kollm.data import IGNORE

# Logits per chunk: 256 MB in fp32 (≈ 523 tokens of a 128,256 vocabulary). A constant, not a key:
# one chunk's buffers are 0.4 GB of trillion-7b's 72 GB plan (the head's V×d gradients, 3–4 GB, do
# not shrink with it), and 523 rows already keep the head matmul GPU-efficient.
CHUNK_ELEMENTS = 2**26


def chunk_rows(vocab: int) -> int:
    """Tokens per chunk for a vocabulary of `vocab` entries."""
    return max(64, CHUNK_ELEMENTS // max(vocab, 1))


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    dev = h.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype


def _up(dt: torch.dtype) -> torch.dtype:
    """The loss maths' dtype: float32 at least (float64 stays, for exact tests)."""
    return torch.float64 if dt == torch.float64 else torch.float32


def _ce_chunks(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, need_grad: bool):
    """Per-token cross entropy and log-sum-exp (fp32), and the gradients of their sum (or None)."""
    dt = _compute_dtype(h)
    n, rows = h.shape[0], chunk_rows(weight.shape[0])
    with torch.autocast(h.device.type, enabled=False):
        x_all, w = h.to(dt), weight.to(dt)
        ce = torch.zeros(n, dtype=_up(dt), device=h.device)
        lse = torch.zeros_like(ce)
        gh = torch.empty(h.shape, dtype=dt, device=h.device) if need_grad else None
        gw = torch.zeros(weight.shape, dtype=_up(dt), device=h.device) if need_grad else None
        for s in range(0, n, rows):
            x, tgt = x_all[s:s + rows], targets[s:s + rows]
            logits = (x @ w.t()).to(_up(dt))
            picked = logits.gather(1, tgt[:, None]).squeeze(1)
            # log-sum-exp and softmax in place: one (chunk, V) buffer
            top = logits.amax(-1)
            p = logits.sub_(top[:, None]).exp_()
            total = p.sum(-1)
            lse_c = top + total.log()
            ce[s:s + rows] = lse_c - picked
            lse[s:s + rows] = lse_c
            if need_grad:  # d ce / d logits = softmax − one-hot
                g = p.div_(total[:, None])
                g.scatter_add_(1, tgt[:, None], torch.full_like(total[:, None], -1.0))
                if dt == torch.bfloat16 and h.device.type == "cpu":
                    # CPU without bf16 units emulates bf16 matmuls (AVX2: ~6× slower than fp32) and
                    # packs a copy of the (V, chunk) operand: the weight gradient from the fp32
                    # softmax gradient instead, and the hidden states' from a column-major bf16 copy
                    # (row-major, that (chunk, V) @ (V, d) takes 20–40× longer)
                    gw.addmm_(g.t(), x.to(gw.dtype))
                    g = torch.empty(g.shape[::-1], dtype=dt, device=g.device).t().copy_(g)
                    torch.mm(g, w, out=gh[s:s + rows])
                else:
                    g = g.to(dt)
                    torch.mm(g, w, out=gh[s:s + rows])
                    if dt == gw.dtype:
                        gw.addmm_(g.t(), x)
                    else:  # accumulated into fp32 without an fp32 copy of the (V, d) product
                        gw.add_(g.t() @ x)
            logits = p = g = None  # freed before the next chunk's matmul: one chunk's buffers at a time
    return ce, lse, gh, gw


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets):
        ce, lse, gh, gw = _ce_chunks(h, weight, targets, need_grad=True)
        ctx.save_for_backward(gh.to(h.dtype), gw.to(weight.dtype))
        ctx.mark_non_differentiable(ce, lse)
        return ce.sum(), ce, lse

    @staticmethod
    def backward(ctx, g_total, _g_ce, _g_lse):
        gh, gw = ctx.saved_tensors
        return gh * g_total.to(gh.dtype), gw * g_total.to(gw.dtype), None


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Σ cross entropy of `h @ weight.T` against `targets` (IGNORE skipped), over chunks of tokens.

    h (..., d) hidden states after the final norm, weight (V, d) the LM head, targets (...) →
    (the sum, differentiable; per-token cross entropy (...) and log-sum-exp (...), fp32, detached,
    0 where ignored). Only the tokens with a target go through the head."""
    shape = targets.shape
    h2, tgt = h.reshape(-1, h.shape[-1]), targets.reshape(-1)
    idx = (tgt != IGNORE).nonzero().squeeze(1)
    hs, ts = h2.index_select(0, idx), tgt.index_select(0, idx)
    if torch.is_grad_enabled() and (hs.requires_grad or weight.requires_grad):
        total, ce_s, lse_s = _LinearCrossEntropy.apply(hs, weight, ts)
    else:
        ce_s, lse_s, _, _ = _ce_chunks(hs, weight, ts, need_grad=False)
        total = ce_s.sum()
    ce = torch.zeros(tgt.shape[0], dtype=ce_s.dtype, device=h.device).index_copy_(0, idx, ce_s)
    lse = torch.zeros_like(ce).index_copy_(0, idx, lse_s)
    return total, ce.view(shape), lse.view(shape)


def chunked_tokens(fn: Callable[..., torch.Tensor], h: torch.Tensor, weight: torch.Tensor,
                   *args: torch.Tensor) -> torch.Tensor:
    """`fn(h_chunk, weight, *arg_chunks)` → (n, ...) per token, over chunks of the (N, d) hidden
    states and the (N, ...) per-token `args`, concatenated. With gradients each chunk is
    checkpointed: what it keeps for backward is its inputs, and backward recomputes its logits."""
    n, rows = h.shape[0], chunk_rows(weight.shape[0])
    grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    if n <= rows and not grad:
        return fn(h, weight, *args)
    outs = []
    for s in range(0, max(n, 1), rows):
        part = (h[s:s + rows], weight, *(a[s:s + rows] for a in args))
        outs.append(checkpoint(fn, *part, use_reentrant=False) if grad else fn(*part))
    return torch.cat(outs)


def token_logprobs(h: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0
                   ) -> torch.Tensor:
    """log softmax(h @ weight.T / temperature)[ids] per token, (N, d) and (N,) → (N,) fp32, chunked."""

    def fn(x: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = torch.nn.functional.linear(x, w)
        logits = logits.to(_up(logits.dtype))
        if temperature != 1.0:
            logits = logits / temperature
        return logits.gather(-1, t[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)

    return chunked_tokens(fn, h, weight, ids)


__all__ = ["linear_cross_entropy", "chunked_tokens", "token_logprobs", "chunk_rows", "CHUNK_ELEMENTS"]
