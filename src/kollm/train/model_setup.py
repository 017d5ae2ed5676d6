"""Model setup every training stage shares: the model a config asks for (a preset sized by its
tokenizer, or a Hugging Face checkpoint with an extended vocabulary), built for the run (fresh and
seeded, or loaded in fp32 master weights), and the shapes a dry run plans with.

Pretraining (Trillion 7B) builds a preset; continual pretraining (DNA 1.0 on Llama 3.1 8B) and every
post-training stage start from `model.init_from`. New rows of a grown vocabulary start at the mean
embedding (Hewitt 2021) or at the mean of the rows that spelled the new token (kollm.tokenizer.extend).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from kollm.model.config import ModelConfig, get_preset
from kollm.model.hf import config_from_hf, load_hf, read_config
from kollm.model.transformer import CausalLM, build_model
from kollm.tokenizer.extend import load_tokenizer_json, resize_for_extended_tokenizer
from kollm.train.config import TrainConfig


def _tokenizer_file(path: str | Path) -> Path:
    p = Path(path)
    return p / "tokenizer.json" if p.is_dir() else p


def model_config(cfg: TrainConfig) -> ModelConfig:
    m = cfg.model
    if m.init_from and m.overrides:
        raise ValueError(f"model.overrides {m.overrides}: not supported with model.init_from={m.init_from} (the "
                         "checkpoint fixes the shapes); a recipe's overrides for its default model are cleared "
                         "with --set model.overrides=null")
    if m.init_from and (Path(m.init_from) / "config.json").is_file():
        mc = config_from_hf(read_config(m.init_from))
    elif m.preset:  # (with init_from: a dry run of a continual-pretraining recipe without the checkpoint)
        mc = get_preset(m.preset, **m.overrides)
    elif m.init_from:
        raise FileNotFoundError(f"model.init_from: {m.init_from}: no config.json (not a Hugging Face directory)")
    else:
        raise ValueError("model: give a preset or init_from")
    if m.tokenizer and not m.init_from:
        mc = mc.replace(**tokenizer_fields(m.tokenizer))
    elif m.tokenizer and _tokenizer_file(m.tokenizer).is_file():  # extended vocabulary (CPT)
        mc = mc.replace(vocab_size=max(mc.vocab_size, tokenizer_fields(m.tokenizer)["vocab_size"]))
    if m.vocab_size is not None:
        if m.vocab_size < mc.vocab_size:
            raise ValueError(f"model.vocab_size: {m.vocab_size} is smaller than the model's {mc.vocab_size}")
        mc = mc.replace(vocab_size=m.vocab_size)
    return mc


def tokenizer_fields(tokenizer_dir: str) -> dict:
    """A fresh model sized to its tokenizer: vocabulary size and the BOS/EOS ids of the Llama 3
    special tokens `kollm tokenizer train` writes (so export and generation stop where the data did)."""
    path = _tokenizer_file(tokenizer_dir)
    if not path.is_file():
        raise FileNotFoundError(f"model.tokenizer: {path} not found")
    tok = load_tokenizer_json(path)  # a corrupt file is an error naming it
    fields: dict = {"vocab_size": tok.get_vocab_size(with_added_tokens=True)}
    for key, token in (("bos_token_id", "<|begin_of_text|>"), ("eos_token_id", "<|end_of_text|>")):
        if (i := tok.token_to_id(token)) is not None:
            fields[key] = i
    return fields


def extend_vocab(model: CausalLM, vocab_size: int) -> CausalLM:
    """Pad the embedding (and an untied LM head) to `vocab_size` (e.g. a multiple of 64 for GEMM
    shapes); rows no token uses yet are the mean of the old ones (Hewitt 2021), not noise."""
    old = model.config.vocab_size
    if vocab_size == old:
        return model
    emb = model.model.embed_tokens.weight.data
    new_emb = nn.Embedding(vocab_size, emb.shape[1], device=emb.device, dtype=emb.dtype)
    new_emb.weight.data[:old] = emb
    new_emb.weight.data[old:] = emb.mean(0)
    model.model.embed_tokens = new_emb
    if model.config.tie_embeddings:
        model.lm_head = nn.Linear(emb.shape[1], vocab_size, bias=False, device=emb.device, dtype=emb.dtype)
        model.lm_head.weight = new_emb.weight
    else:
        head = model.lm_head.weight.data
        model.lm_head = nn.Linear(head.shape[1], vocab_size, bias=False, device=head.device, dtype=head.dtype)
        model.lm_head.weight.data[:old] = head
        model.lm_head.weight.data[old:] = head.mean(0)
    model.config.vocab_size = vocab_size
    return model


def resize_to_tokenizer(model: CausalLM, init_from: str, tokenizer: str) -> None:
    """Continual pretraining with an extended tokenizer (`kollm tokenizer extend`): grow the
    embedding and LM head, each new row the mean of the rows of the base tokens that spelled the
    new token. The base tokenizer is the one shipped in `init_from`."""
    new = _tokenizer_file(tokenizer)
    if not new.is_file():
        raise FileNotFoundError(f"model.tokenizer: {new} not found")
    base = _tokenizer_file(init_from)
    if base.is_file() and base.resolve() == new.resolve():
        return
    size = load_tokenizer_json(new).get_vocab_size(with_added_tokens=True)
    if size <= model.config.vocab_size:
        return  # the checkpoint's rows already cover every id
    if not base.is_file():
        raise FileNotFoundError(f"model.tokenizer has {size} tokens but {model.config.vocab_size} rows in "
                                f"{init_from}, which holds no tokenizer.json to initialise the new rows from")
    resize_for_extended_tokenizer(model, base, new)


def build_run_model(cfg: TrainConfig, device: torch.device) -> CausalLM:
    """Fresh (seeded) or from init_from, extended vocabulary applied, fp32 master weights."""
    torch.manual_seed(cfg.seed)
    if cfg.model.init_from:
        model = load_hf(cfg.model.init_from, device=device, dtype=torch.float32)
        if cfg.model.tokenizer:
            resize_to_tokenizer(model, cfg.model.init_from, cfg.model.tokenizer)
        if cfg.model.vocab_size is not None:
            if cfg.model.vocab_size < model.config.vocab_size:
                raise ValueError(f"model.vocab_size: {cfg.model.vocab_size} is smaller than the checkpoint's "
                                 f"{model.config.vocab_size}")
            extend_vocab(model, cfg.model.vocab_size)
        return model
    # FSDP: shapes only here; each rank allocates and initialises its shard after sharding.
    return build_model(model_config(cfg), device="meta" if cfg.parallel.mode in ("zero1", "fsdp") else device)


def plan_model_config(cfg: TrainConfig) -> tuple[ModelConfig, list[str]]:
    """The model a dry run plans: the checkpoint's or the preset's shapes, without a tokenizer or
    checkpoint that an earlier recipe stage has not written yet (a note says so)."""
    m, notes = cfg.model, []
    if m.tokenizer and not _tokenizer_file(m.tokenizer).is_file():
        notes.append(f"model.tokenizer {m.tokenizer} is not there yet: planned with the preset's vocabulary")
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(m, tokenizer=None))
        m = cfg.model
    if m.init_from and not (Path(m.init_from) / "config.json").is_file():
        if not m.preset:
            raise FileNotFoundError(f"model.init_from: {m.init_from}: no config.json, and no model.preset to plan "
                                    "with: set model.preset to the checkpoint's shapes for the dry run")
        notes.append(f"model.init_from {m.init_from} is not there yet: planned with preset {m.preset}")
    return model_config(cfg), notes


__all__ = ["model_config", "tokenizer_fields", "extend_vocab", "resize_to_tokenizer", "build_run_model",
           "plan_model_config"]
