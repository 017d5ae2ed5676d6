"""`kollm pretrain CONFIG [--dry-run] [--resume]`: pretraining (Trillion 7B) or continual
pretraining from a Hugging Face checkpoint (DNA 1.0 on Llama 3.1 8B) with XLDA packing.

Under `torchrun` the same command trains on every rank (gloo on CPU, NCCL on GPU). `--dry-run`
builds the model on the meta device and prints the plan: parameters, steps and tokens per
phase, FLOPs, and GPU-hours at a given MFU and peak FLOP/s (`--plan-json`: as JSON, for `kollm run
--dry-run`). At the end the last checkpoint is
exported as a Hugging Face directory `OUTPUT_DIR/hf/step-N`, with `OUTPUT_DIR/hf/latest`
pointing at it (checkpoint.export_hf).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
from torch import nn

from kollm.model.config import ModelConfig, get_preset
from kollm.model.transformer import CausalLM, build_model
from kollm.train.config import TrainConfig, load_config


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
        from kollm.model.hf import config_from_hf, read_config

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
    from kollm.tokenizer.extend import load_tokenizer_json

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
    from kollm.tokenizer.extend import load_tokenizer_json

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
    from kollm.tokenizer.extend import resize_for_extended_tokenizer

    resize_for_extended_tokenizer(model, base, new)


def build_run_model(cfg: TrainConfig, device: torch.device) -> CausalLM:
    """Fresh (seeded) or from init_from, extended vocabulary applied, fp32 master weights."""
    torch.manual_seed(cfg.seed)
    if cfg.model.init_from:
        from kollm.model.hf import load_hf

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


def check_vocabulary(data, vocab_size: int, shards: str) -> None:
    """Shards from another tokenizer would fail deep in the embedding with an index error."""
    ids = {lang: c.max_token_id for lang, c in data.corpora.items() if c.max_token_id is not None}
    if ids and max(ids.values()) >= vocab_size:
        lang = max(ids, key=ids.get)
        raise ValueError(f"{shards}: {lang} token ids reach {ids[lang]} but the model has {vocab_size} embedding "
                         "rows; set model.tokenizer to the tokenizer that made the shards")


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


def dry_run(cfg: TrainConfig, world: int, mfu: float, peak_flops: float, device_memory: float | None = None,
            as_plan: bool = False, pretraining: bool = True):
    """The FLOPs/GPU-hours plan, then the per-rank memory of each phase's micro-batch (kollm.train.memory).
    `as_plan`: the kollm.plan dict (parts per phase) with the text inside."""
    from kollm.train.flops import format_plan, make_plan
    from kollm.train.memory import H100_MEMORY, format_memory, memory_plan
    from kollm.train.schedules import micro_batches, phase_data

    mc, notes = plan_model_config(cfg)
    plan = make_plan(cfg, mc, world)
    precision = cfg.parallel.mixed_precision or "bf16"  # a plan is for the GPU, where bf16 is the default
    ac, every = cfg.parallel.activation_checkpointing, cfg.parallel.checkpoint_every
    rows = [(ph.name, memory_plan(mc, cfg.parallel.mode, world, phase_data(ph).batch_size, p.seq_len, precision,
                                  ac, every, accumulating=len(micro_batches(cfg.batch, 2**62, p.seq_len,
                                                                            phase_data(ph).batch_size, world)) > 1))
            for ph, p in zip(cfg.phases, plan.phases)]
    device_memory = device_memory or H100_MEMORY
    compiled = cfg.parallel.compile is not False  # unset: on, as on the CUDA device the plan is for
    how = "unset: on for CUDA, off on CPU" if cfg.parallel.compile is None else "parallel.compile"
    text = (format_plan(plan, mfu, peak_flops, pretraining) + "\n\n"
            + format_memory(rows, device_memory, ac, every)
            + f"\ncompile: {'on' if compiled else 'off'} ({how}); precision: {precision}"
            + "".join("\n" + n for n in notes))
    if not as_plan:
        return text
    from kollm.plan import part

    ckpt = cfg.parallel.activation_checkpointing
    parts = [dict(part(p.name, "train", p.tokens, mc.flops_per_token(p.seq_len), p.seq_len),
                  flops_6nd=6.0 * plan.params_without_mtp * p.tokens, steps=p.steps) for p in plan.phases]
    return {"parts": parts, "memory": max(m.total(ckpt) for _, m in rows), "notes": notes, "text": text,
            "params": plan.params, "params_without_mtp": plan.params_without_mtp, "steps": plan.steps}


def plan_of(stage: str, cfg: TrainConfig, args, repeat: int = 1, extra_text: str = "") -> dict:
    """The kollm.plan dict of a trainer run (pretrain, SFT; `repeat` runs of it, e.g. SFT seeds)."""
    from kollm.plan import make, world_of

    d = dry_run(cfg, world_of(args), args.mfu, args.peak_flops, args.device_memory, as_plan=True,
                pretraining=stage == "pretrain")
    parts = d["parts"]
    if repeat > 1:
        parts = [dict(p, name=f"{p['name']} × {repeat}", tokens=p["tokens"] * repeat, flops=p["flops"] * repeat,
                      flops_6nd=p["flops_6nd"] * repeat) for p in parts]
    plan = make(stage, args, parts, memory=d["memory"], notes=d["notes"], params=d["params"],
                params_without_mtp=d["params_without_mtp"], steps=d["steps"] * repeat)
    plan["text"] = d["text"] + extra_text
    return plan


def main(argv: list[str]) -> int:
    from kollm.plan import add_plan_args, emit

    p = argparse.ArgumentParser(prog="kollm pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="training config (YAML), e.g. recipes/tiny-pretrain.yaml")
    add_plan_args(p, "print the plan (meta device) and exit")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value (YAML), e.g. --set data.shards=runs/x/shards (repeatable)")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.set)

    if args.dry_run:
        return emit(plan_of("pretrain", cfg, args), args)

    from kollm.data.loader import PretrainLoader
    from kollm.train.export import export_final
    from kollm.train.parallel import distributed_run
    from kollm.train.schedules import phase_data
    from kollm.train.trainer import LMObjective, Trainer

    if not cfg.data.shards:
        raise ValueError(f"{args.config}: data.shards is required to train (a `kollm data tokenize` output)")
    if cfg.checkpoint.export_hf:
        from kollm.model.hf import export_architecture

        export_architecture(model_config(cfg))  # an unexportable model fails now, not after training
    with distributed_run(cfg.parallel) as info:
        model = build_run_model(cfg, info.device)
        data = PretrainLoader(cfg.data.shards, phase_data(cfg.phases[0]), seed=cfg.seed, rank=info.rank,
                              world_size=info.world, block_size=cfg.data.block_size)
        check_vocabulary(data, model.config.vocab_size, cfg.data.shards)
        val = None
        if cfg.data.validation:
            from kollm.data.loader import HeldOutBatches

            first = phase_data(cfg.phases[0])
            val = HeldOutBatches(cfg.data.validation, first, cfg.validation.batches,
                                 cfg.validation.batch_size or first.batch_size, data.langs, rank=info.rank,
                                 world_size=info.world, block_size=cfg.data.block_size)
            if val.max_token_id is not None and val.max_token_id >= model.config.vocab_size:
                raise ValueError(f"{cfg.data.validation}: token ids reach {val.max_token_id} but the model has "
                                 f"{model.config.vocab_size} embedding rows (shards from another tokenizer?)")
        objective = LMObjective(cfg.data.mask_policy, cfg.data.restart_positions, langs=data.langs)
        trainer = Trainer(cfg, model, objective, data, info, val_data=val)
        trainer.fit(resume=args.resume)  # a diverged run raises: `kollm` exits 3 with its message
        if (out := export_final(trainer, cfg)) is not None:
            print(f"kollm pretrain: Hugging Face export in {out}", file=sys.stderr)
    return 0


__all__ = ["main", "model_config", "tokenizer_fields", "resize_to_tokenizer", "build_run_model", "extend_vocab", "dry_run",
           "plan_model_config", "plan_of"]
