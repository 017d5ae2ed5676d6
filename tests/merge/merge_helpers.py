"""Helpers for the merge tests: tiny Hugging Face checkpoints written by transformers itself."""

from pathlib import Path

import torch


def tiny_hf(out: Path, kind: str = "llama", seed: int = 0, layers: int = 3, vocab: int = 32, tie: bool = False,
            dtype: torch.dtype = torch.float32, max_shard_size: str | None = None) -> Path:
    """A random LlamaForCausalLM / Qwen2ForCausalLM (q/k/v biases) with wide weights, no tokenizer."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[kind]
    cfg = cls(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=layers, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie, bos_token_id=1,
              eos_token_id=2)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.to(dtype).save_pretrained(out, **kw)
    return out


def read_all(d: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        out.update(load_file(f))
    return out
