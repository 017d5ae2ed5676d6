"""Model configuration and presets.

One dataclass describes every decoder kollm builds: Llama 3 (the DNA 1.0 base), Qwen2.5 (the
DNA teacher/judge) and Trillion 7B (sandwich norm, MTP). Parameter and FLOP counting live here
so that `kollm model info` and `kollm pretrain --dry-run` agree with what is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

NormPlacement = Literal["pre", "post", "sandwich"]


@dataclass
class RopeScaling:
    """Llama 3.1 frequency scaling ("rope_type": "llama3" in HF configs)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass
class ModelConfig:
    vocab_size: int = 32000
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int = 8
    ffn_dim: int = 688
    head_dim: int | None = None  # default dim // n_heads
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_seq_len: int = 2048
    tie_embeddings: bool = False
    norm_placement: NormPlacement = "pre"
    qkv_bias: bool = False  # Qwen2 family
    mtp: bool = False  # one extra block predicting token t+2 (Trillion §3.4)
    init_std: float = 0.02
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        if self.head_dim is None:
            self.head_dim = self.dim // self.n_heads
        problems = []
        if self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 2:
            problems.append(f"head_dim ({self.head_dim}) must be even for RoPE")
        if self.norm_placement not in ("pre", "post", "sandwich"):
            problems.append(f"norm_placement must be pre|post|sandwich, got {self.norm_placement!r}")
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    # ---- counting -------------------------------------------------------------------------
    def block_params(self) -> int:
        hd = self.head_dim
        attn = self.dim * hd * (self.n_heads + 2 * self.n_kv_heads) + self.n_heads * hd * self.dim
        if self.qkv_bias:
            attn += hd * (self.n_heads + 2 * self.n_kv_heads)
        mlp = 3 * self.dim * self.ffn_dim
        norms = {"pre": 2, "post": 2, "sandwich": 4}[self.norm_placement] * self.dim
        return attn + mlp + norms

    def num_params(self, include_mtp: bool = True) -> int:
        embed = self.vocab_size * self.dim
        head = 0 if self.tie_embeddings else self.vocab_size * self.dim
        n = embed + head + self.n_layers * self.block_params() + self.dim  # final norm
        if self.mtp and include_mtp:
            n += self.block_params() + self.dim  # MTP block + its final norm
        return n

    def num_non_embedding_params(self, include_mtp: bool = True) -> int:
        """Parameters minus input embedding and LM head (Tao et al.'s N_v, Kaplan's N)."""
        embed = self.vocab_size * self.dim * (1 if self.tie_embeddings else 2)
        return self.num_params(include_mtp) - embed

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token: 6·N + 12·L·d·T (Kaplan/PaLM; N without embeddings)."""
        n = self.num_params() - self.vocab_size * self.dim  # input embedding is a lookup, no matmul
        layers = self.n_layers + (1 if self.mtp else 0)
        return 6 * n + 12 * layers * self.n_heads * self.head_dim * seq_len

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, ModelConfig] = {
    # Llama 3.1 8B: 8,030,261,248 parameters (the DNA 1.0 base).
    "llama3.1-8b": ModelConfig(
        vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336,
        rope_theta=500000.0, rope_scaling=RopeScaling(), max_seq_len=131072, norm_eps=1e-5,
        bos_token_id=128000, eos_token_id=128001,
    ),
    # Trillion 7B, Table 2: sandwich norm, MHA (32 KV heads), θ 100,000, MTP during pretraining.
    "trillion-7b": ModelConfig(
        vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11008,
        rope_theta=100000.0, max_seq_len=4096, norm_placement="sandwich", mtp=True,
    ),
    # Trillion 7B as exported for post-training: the MTP block is dropped at export (SFT, DPO, GRPO dry runs).
    "trillion-7b-nomtp": ModelConfig(
        vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11008,
        rope_theta=100000.0, max_seq_len=4096, norm_placement="sandwich",
    ),
    # Llama 3.1 405B (DNA 1.0's distillation teacher): 405,853,388,800 parameters; dry runs only.
    "llama3.1-405b": ModelConfig(
        vocab_size=128256, dim=16384, n_layers=126, n_heads=128, n_kv_heads=8, ffn_dim=53248,
        rope_theta=500000.0, rope_scaling=RopeScaling(), max_seq_len=131072, norm_eps=1e-5,
        bos_token_id=128000, eos_token_id=128001,
    ),
    # Qwen2.5 7B (the DNA teacher and judge family): q/k/v bias, GQA 28/4, θ 1e6.
    "qwen2.5-7b": ModelConfig(
        vocab_size=152064, dim=3584, n_layers=28, n_heads=28, n_kv_heads=4, ffn_dim=18944,
        rope_theta=1000000.0, max_seq_len=32768, norm_eps=1e-6, qkv_bias=True,
        bos_token_id=151643, eos_token_id=151643,
    ),
    # Tiny sizes: tests and the CPU demo.
    "tiny": ModelConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=176, max_seq_len=512),
    "tiny-sandwich-mtp": ModelConfig(
        vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=4, ffn_dim=176, max_seq_len=512,
        norm_placement="sandwich", mtp=True, rope_theta=100000.0,
    ),
    # The tiny demo's model as exported for post-training (recipes/tiny-demo.yaml's SFT, DPO, merge, GRPO
    # and eval dry runs): tiny-sandwich-mtp with recipes/tiny-demo-pretrain.yaml's overrides (head_dim
    # stays the base preset's 16: overrides do not recompute it), the MTP block dropped at export, and
    # the vocabulary the demo's tokenizer stage makes from the embedded corpus (910: 256 bytes + 287 en
    # + 361 ko merges, the budgets cut short by the text, + 6 special tokens).
    "tiny-demo-nomtp": ModelConfig(
        vocab_size=910, dim=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=352, head_dim=16, max_seq_len=512,
        norm_placement="sandwich", rope_theta=100000.0, bos_token_id=904, eos_token_id=905,
    ),
    # ~20M parameters: the CPU benchmark size.
    "small-20m": ModelConfig(vocab_size=8192, dim=384, n_layers=8, n_heads=6, n_kv_heads=2, ffn_dim=1024, max_seq_len=1024),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name].replace(**overrides)


def memory_bytes(cfg: ModelConfig) -> dict[str, dict[str, int]]:
    """Bytes for weights, gradients and AdamW states (two moments) in fp32 and bf16.

    bf16 here means bf16 weights/grads with fp32 AdamW moments and an fp32 master copy, the
    usual mixed-precision layout; fp32 means everything in fp32.
    """
    n = cfg.num_params()
    return {
        "fp32": {"weights": 4 * n, "grads": 4 * n, "adamw_states": 8 * n, "total": 16 * n},
        "bf16": {"weights": 2 * n, "grads": 2 * n, "adamw_states": 12 * n, "total": 16 * n},
    }


__all__ = ["ModelConfig", "RopeScaling", "PRESETS", "get_preset", "memory_bytes"]
