"""The decoder: Llama-3-style transformer in plain PyTorch.

RMSNorm, SwiGLU, RoPE, grouped-query attention, tied or untied embeddings, and three norm
placements: `pre` (Llama), `post` (OLMo 2: norm after attention/FFN, inside the residual) and
`sandwich` (Trillion §3.4: before *and* after attention and FFN; Gemma 2 names). Optional
multi-token prediction: one extra block after the last predicts token t+2 (Trillion §3.4,
Gloeckle et al.); it is dropped at export.

Parameter names are Hugging Face's (`model.layers.N.self_attn.q_proj.weight`, ...), so a Llama or
Qwen2 checkpoint loads by name and mergekit-style filters (`self_attn`, `mlp`) work unchanged.
Parallelism and activation checkpointing are applied from outside (`kollm.train.parallel`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kollm.model import masks
from kollm.model.config import ModelConfig
from kollm.model.rope import apply_rope, document_positions, inv_frequencies, rope_cos_sin


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 then cast back, as HF Llama does (bf16 variance is too coarse).
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class KVCache:
    """Keys/values for incremental decoding; `pos` tokens are filled, at most `max_len`. Memory
    grows with the tokens (capacity doubles when full, amortised O(1) per token), so a request
    for many tokens that stops early never holds memory for all of them. `reserve`: columns to
    allocate up front. `generate(cache="dynamic")` decodes with it; the fixed-shape cache that
    compiled steps and the server use is `StaticKVCache`."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype, reserve: int = 0):
        shape = (batch, cfg.n_kv_heads, min(reserve, max_len), cfg.head_dim)
        n = cfg.n_layers
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n)]
        self.pos = 0
        self.max_len = max_len

    def _grow(self, layer: int, end: int) -> None:
        cap = min(self.max_len, max(end, 2 * self.k[layer].shape[2], 64))
        for buf in (self.k, self.v):
            old = buf[layer]
            new = old.new_zeros(*old.shape[:2], cap, old.shape[3])
            new[:, :, :self.pos] = old[:, :, :self.pos]
            buf[layer] = new

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} tokens > max_len {self.max_len}")
        if end > self.k[layer].shape[2]:
            self._grow(layer, end)
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` (finished sequences dropped)."""
        self.k = [t[rows] for t in self.k]
        self.v = [t[rows] for t in self.v]


class StaticKVCache:
    """Keys/values preallocated for a request's whole length bound, `(batch, kv_heads, max_len,
    head_dim)` per layer, written in place at the columns `index` (a long tensor the caller sets
    before each forward), so every decode step has the same shapes and the same buffers: what
    `torch.compile` and CUDA graphs need (gpt-fast's and transformers' StaticCache). Attention
    reads all `max_len` columns; the caller's mask hides the ones not written yet (and left
    padding). `pos` is the callers' bookkeeping of filled columns; the forward never reads it."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype):
        shape = (batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.index = torch.zeros(1, dtype=torch.long, device=device)
        self.pos = 0
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # under autocast the projections come out bf16 while the cache holds the weights' dtype;
        # index_copy_ does not cast (slice assignment did)
        self.k[layer].index_copy_(2, self.index, k.to(self.k[layer].dtype))
        self.v[layer].index_copy_(2, self.index, v.to(self.v[layer].dtype))
        return self.k[layer], self.v[layer]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` (finished sequences dropped; eager decoding only)."""
        self.k = [t[rows] for t in self.k]
        self.v = [t[rows] for t in self.v]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, mask, cache: KVCache | StaticKVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        gqa = self.n_heads != self.n_kv_heads
        if isinstance(mask, torch.Tensor) or mask is None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=gqa)
        else:  # FlexAttention BlockMask
            y = _flex_attention()(q, k, v, block_mask=mask, enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


_FLEX = None


def _flex_attention():
    # Compiled once per process: eager flex_attention materialises the full score matrix.
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX = torch.compile(flex_attention, dynamic=False) if torch.cuda.is_available() else flex_attention
    return _FLEX


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.placement = cfg.norm_placement
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = MLP(cfg)
        norm = lambda: RMSNorm(cfg.dim, cfg.norm_eps)  # noqa: E731
        # Names follow HF: Llama (input_layernorm, post_attention_layernorm = pre-FFN norm),
        # OLMo 2 (post_attention_layernorm, post_feedforward_layernorm), Gemma 2 (all four).
        if self.placement in ("pre", "sandwich"):
            self.input_layernorm = norm()
        self.post_attention_layernorm = norm()
        if self.placement == "sandwich":
            self.pre_feedforward_layernorm = norm()
        if self.placement in ("post", "sandwich"):
            self.post_feedforward_layernorm = norm()

    def forward(self, x, cos, sin, mask, cache: KVCache | StaticKVCache | None = None) -> torch.Tensor:
        if self.placement == "pre":
            x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
            return x + self.mlp(self.post_attention_layernorm(x))
        if self.placement == "post":
            x = x + self.post_attention_layernorm(self.self_attn(x, cos, sin, mask, cache))
            return x + self.post_feedforward_layernorm(self.mlp(x))
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, mask, cache))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)


class MTPHead(nn.Module):
    """One extra transformer block on the last hidden state; predicts token t+2."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.block = Block(cfg, layer_idx=cfg.n_layers)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)


@dataclass
class ModelOutput:
    logits: torch.Tensor | None  # (B, T, V): position t predicts token t+1; None with a `head`
    mtp_logits: torch.Tensor | None = None  # (B, T, V): position t predicts token t+2
    head: Any = None  # what forward's `head` made of the next-token hidden states
    mtp_head: Any = None  # ... and of the MTP block's


class CausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.mtp = MTPHead(cfg) if cfg.mtp else None
        self.tie_weights()
        self.reset_parameters()

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def reset_parameters(self) -> None:
        std = self.config.init_std
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
            elif isinstance(m, RMSNorm):
                m.reset_parameters()

    def rope(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        key = (position_ids.device, cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        cached = getattr(self, "_inv_freq", None)
        if cached is None or cached[0] != key:  # not a buffer: survives meta-device init and FSDP
            cached = (key, inv_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling).to(position_ids.device))
            self._inv_freq = cached
        return rope_cos_sin(position_ids, cached[1], dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        doc_ids: torch.Tensor | None = None,
        lang_ids: torch.Tensor | None = None,
        mask_policy: str = "causal",
        position_ids: torch.Tensor | None = None,
        restart_positions: bool = False,
        attn_mask=None,
        cache: KVCache | None = None,
        last_only: bool = False,
        head: Callable[[torch.Tensor, torch.Tensor, int], Any] | None = None,
    ) -> ModelOutput:
        """Logits for a (B, T) batch.

        doc_ids/lang_ids + mask_policy give the packed-sequence mask (kollm.model.masks); an
        explicit `attn_mask` (bool (B,1,T,S) or a BlockMask) overrides it. With `cache`, the
        tokens continue the cached ones. `restart_positions` restarts RoPE positions per
        document where the policy isolates documents. With `head`, no logits: `head(hidden, lm_head
        weight, shift)` takes the final-normed hidden states (B, T, d) of the next-token (shift 1) and
        MTP (shift 2, training only) heads, inside this forward (so FSDP2 has the weight
        all-gathered): how the objectives run the chunked loss (kollm.train.objectives.chunked).
        """
        B, T = input_ids.shape
        start = cache.pos if cache is not None else 0
        if position_ids is None:
            if restart_positions and doc_ids is not None and masks.ISOLATES_DOCUMENTS[mask_policy]:
                position_ids = document_positions(doc_ids)
            else:
                position_ids = torch.arange(start, start + T, device=input_ids.device).expand(B, T)
        mask = attn_mask
        if mask is None and doc_ids is not None and (mask_policy != "causal" or (doc_ids < 0).any()):
            mask = masks.build_mask(mask_policy, doc_ids, lang_ids)
        if mask is None and cache is not None and T > 1:
            # Plain causal continuation of a cache: SDPA's is_causal aligns top-left, so be explicit.
            q = torch.arange(start, start + T, device=input_ids.device)
            mask = (torch.arange(start + T, device=input_ids.device)[None, :] <= q[:, None])[None, None]
        if mask is None and cache is not None and T == 1:
            mask = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=input_ids.device)

        h = self.model.embed_tokens(input_ids)
        cos, sin = self.rope(position_ids, h.dtype)
        for layer in self.model.layers:
            h = layer(h, cos, sin, mask, cache)
        if cache is not None:
            cache.pos += T
        mtp_logits = mtp_head = None
        if self.mtp is not None and self.training:
            h2 = self.mtp.norm(self.mtp.block(h, cos, sin, mask))
            if head is not None:
                mtp_head = head(h2, self.lm_head.weight, 2)
            else:
                mtp_logits = self.lm_head(h2)
        if head is not None:
            return ModelOutput(None, None, head(self.model.norm(h), self.lm_head.weight, 1), mtp_head)
        if last_only:
            h = h[:, -1:]
        return ModelOutput(self.lm_head(self.model.norm(h)), mtp_logits)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> CausalLM:
    """Build on `device` ("meta" builds without memory, for counting and planning)."""
    with torch.device(device):
        model = CausalLM(cfg)
    return model.to(dtype)
