"""The model: config and presets, the decoder, masks, RoPE, HF interop, generation."""

from kollm.model.config import PRESETS, ModelConfig, get_preset
from kollm.model.transformer import CausalLM, KVCache, ModelOutput, StaticKVCache, build_model

__all__ = ["PRESETS", "ModelConfig", "get_preset", "CausalLM", "KVCache", "StaticKVCache", "ModelOutput", "build_model"]
