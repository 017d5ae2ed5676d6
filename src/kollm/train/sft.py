"""`kollm sft CONFIG [--set KEY=VALUE] [--resume] [--dry-run] [--seeds N]`: supervised fine-tuning
on chat data with the loss on responses only (Trillion 7B §4 after Tulu 3; DNA 1.0 §4.2).

The one trainer (kollm.train.trainer) with the SFT objective (kollm.train.objectives.sft) and the
chat data source (kollm.data.sft): the same config sections, parallel modes under `torchrun`, DCP
checkpoints, exact resume and metrics as `kollm pretrain`. `model.init_from` is the Hugging Face
directory to fine-tune (a `kollm pretrain` export, Llama 3.1 8B); `data.train` / `data.validation`
the chat rows; the context is the phase's `seq_len`. Packing (`data.pack_conversations`, the default)
needs `data.mask_policy: document`
(with `restart_positions: true`): no attention across packed conversations.

The final model goes to `OUTPUT_DIR/hf/step-N` (`OUTPUT_DIR/hf/latest` points at it) with the
tokenizer and its chat template — the tokenizer's own, or kollm's default Llama 3 template when it
has none — so transformers, vLLM, `kollm generate` (unless --raw) and `kollm serve` render the prompt the
model was trained on; generation stops at the end-of-turn token as well as at EOS.

`--seeds N` (Trillion: 3) trains N runs with seeds seed, seed+1, ... into OUTPUT_DIR/seed-K and
averages them with uniform weights (a model soup, Wortsman et al. 2022; kollm.merge.soup) into
`OUTPUT_DIR/hf/soup`, which `OUTPUT_DIR/hf/latest` then points at.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
from pathlib import Path

import torch.distributed as dist

from kollm.data import chat
from kollm.data.chat import stop_token_ids
from kollm.data.sft import SFTData, SFTValidation
from kollm.model.hf import DTYPES, export_architecture, save_hf
from kollm.plan import add_plan_args, emit
from kollm.train.config import TrainConfig, trainer_config
from kollm.train.export import link_latest, load_checkpoint_model
from kollm.train.model_setup import model_config
from kollm.train.objectives.sft import SFTObjective
from kollm.train.parallel import distributed_run
from kollm.train.spec import StageSpec
from kollm.train.trainer import Trainer
from kollm.train.trainer_plan import plan_of


def tokenizer_source(cfg: TrainConfig) -> str:
    src = cfg.model.tokenizer or cfg.model.init_from
    if not src:
        raise ValueError("model.init_from (a Hugging Face directory) or model.tokenizer is required for SFT: "
                         "the chat template comes from the tokenizer")
    return src


def check_config(cfg: TrainConfig, where: str) -> None:
    if not cfg.data.train:
        raise ValueError(f"{where}: data.train is required (chat rows: JSONL or Parquet files, a directory or a glob)")
    if cfg.data.pack_conversations and cfg.data.mask_policy != "document":
        raise ValueError(f"{where}: data.pack_conversations needs data.mask_policy: document (got {cfg.data.mask_policy!r}): "
                         "packed conversations must not attend to each other")


def export(checkpoint_dir: Path, out: Path, tokenizer, dtype) -> Path:
    """The checkpoint as a Hugging Face directory with the tokenizer and its chat template (kept in
    tokenizer_config.json, where every transformers version and vLLM read it); generation stops at
    the end-of-turn token as well as at EOS."""
    model, _ = load_checkpoint_model(checkpoint_dir)
    with tempfile.TemporaryDirectory() as tok_dir:
        tokenizer.save_pretrained(tok_dir, save_jinja_files=False)
        return save_hf(model, out, tokenizer=tok_dir, dtype=dtype,
                       generation_config={"eos_token_id": stop_token_ids(tokenizer)})


def data_sources(cfg: TrainConfig, tokenizer, info, cache: dict | None = None):
    """Train and validation sources; `cache` keeps the rendered conversations across seed runs."""
    d, first, cache = cfg.data, cfg.phases[0].data, {} if cache is None else cache
    key = ("train", d.train, d.min_score, d.score_key)
    train = SFTData(d.train, tokenizer, seed=cfg.seed, rank=info.rank, world_size=info.world, packing=d.pack_conversations,
                    min_score=d.min_score, score_key=d.score_key, convs=cache.get(key))
    cache[key] = train.convs
    val = None
    if d.validation:
        val = SFTValidation(d.validation, tokenizer, first.seq_len, cfg.validation.batch_size or first.batch_size,
                            info.rank, info.world, d.pack_conversations, convs=cache.get(("val", d.validation)))
        cache[("val", d.validation)] = val.convs
    return train, val


def describe(name: str, data, seq_len: int) -> str:
    s = data.summary() if hasattr(data, "summary") else {}
    line = (f"{name}: {s['conversations']} conversations, {s['tokens']} tokens ({s['trained_tokens']} trained); "
            f"{s['truncated']} longer than seq_len {seq_len} truncated ({s['truncated_no_response']} left without "
            f"a response, dropped); {s['below_min_score']} below min_score")
    return line + (f"; {data.convs.errors.summary()}" if data.convs.errors.total else "")


def train_one(cfg: TrainConfig, info, tokenizer, resume: bool, cache: dict | None = None) -> Path | None:
    """Train one run; returns the Hugging Face export (rank 0) or None."""
    model = SPEC.model(cfg, info.device)
    data, val = SPEC.data(cfg, tokenizer, info, cache)
    data.set_phase(cfg.phases[0].data)
    if info.is_main:
        print(describe("kollm sft: train", data, data.seq_len), file=sys.stderr)
    vocab = model.config.vocab_size
    if int(data.convs.ids.max()) >= vocab:
        raise ValueError(f"{cfg.data.train}: token ids reach {int(data.convs.ids.max())} but the model has {vocab} "
                         f"embedding rows; the tokenizer ({tokenizer_source(cfg)}) does not belong to the model")
    objective = SPEC.objective(cfg)
    trainer = Trainer(cfg, model, objective, data, info, val_data=val)
    trainer.fit(resume=resume)
    out = None
    if cfg.checkpoint.export_hf and info.is_main:
        out = trainer.run_dir / "hf" / trainer.last_checkpoint.name
        if not out.exists():  # a resumed, already finished run exported it before
            export(trainer.last_checkpoint, out, tokenizer, DTYPES[cfg.checkpoint.export_dtype])
        link_latest(out)
        print(f"kollm sft: Hugging Face export in {out}", file=sys.stderr)
    if info.distributed:
        dist.barrier()
    return out


def count_rows(cfg: TrainConfig, tokenizer, cache: dict | None = None) -> int:
    """Training rows of one epoch over all ranks (packed rows when data.pack_conversations)."""
    d, cache = cfg.data, {} if cache is None else cache
    key = ("train", d.train, d.min_score, d.score_key)
    data = SFTData(d.train, tokenizer, seed=cfg.seed, packing=d.pack_conversations, min_score=d.min_score,
                   score_key=d.score_key, convs=cache.get(key))
    cache[key] = data.convs
    data.set_phase(cfg.phases[0].data)
    return len(data.epoch_rows(0))


def with_epochs(cfg: TrainConfig, rows: int, where: str = "config") -> tuple[TrainConfig, str]:
    """`data.epochs`: the one phase runs ⌈rows × epochs ÷ (batch.tokens ÷ seq_len)⌉ steps (Tulu 3
    counts its SFT in epochs, not steps). Returns the config and a line saying how."""
    e = cfg.data.epochs
    if e is None:
        return cfg, ""
    if e <= 0 or len(cfg.phases) != 1:
        raise ValueError(f"{where}: data.epochs ({e}) sets the steps of the one SFT phase: it must be > 0 with one "
                         f"phase (got {len(cfg.phases)})")
    seq = cfg.phases[0].data.seq_len
    per_step = max(1, cfg.batch.tokens // seq)
    steps = max(1, math.ceil(rows * e / per_step))
    phase = dataclasses.replace(cfg.phases[0], steps=steps, tokens=None)
    return (dataclasses.replace(cfg, phases=[phase]),
            f"steps from the data: ⌈{rows:,} rows × {e:g} epochs ÷ {per_step} rows per step⌉ = {steps:,}")


def seed_config(cfg: TrainConfig, k: int) -> TrainConfig:
    return dataclasses.replace(cfg, seed=cfg.seed + k, output_dir=str(Path(cfg.output_dir) / f"seed-{k}"),
                               name=f"{cfg.name}-seed{k}")


def soup(model_dirs: list[Path], out: Path) -> Path:
    """Uniform linear merge of the seed runs (kollm.merge, mergekit's `linear`)."""
    try:
        from kollm.merge import soup as merge_soup  # the merge stage's package: loaded only for --seeds
    except ImportError as e:
        raise RuntimeError(f"--seeds needs kollm.merge.soup to average the runs ({e})") from None
    if out.exists():
        return out
    merge_soup([str(d) for d in model_dirs], str(out))
    return out


def dry_run(cfg: TrainConfig, args: argparse.Namespace, seeds: int) -> dict:
    """The kollm.plan dict: the trainer's plan × seeds, and a summary of the data when it is there."""
    text, rows = "", None
    if seeds > 1:
        text += f"\n× {seeds} seeds ({cfg.seed}..{cfg.seed + seeds - 1}) → uniform soup in {cfg.output_dir}/hf/soup"
    try:
        tok = chat.load_tokenizer(tokenizer_source(cfg))
        data = SFTData(cfg.data.train, tok, packing=cfg.data.pack_conversations, min_score=cfg.data.min_score,
                       score_key=cfg.data.score_key)
        data.set_phase(cfg.phases[0].data)
        rows = len(data.epoch_rows(0))
        text += "\n" + describe("data.train", data, data.seq_len)
        text += f"\none epoch = {rows} rows of {data.seq_len} tokens ({'packed' if cfg.data.pack_conversations else 'padded'})"
    except (FileNotFoundError, OSError, ValueError) as e:
        text += f"\n(data not inspected: {e})"
    if cfg.data.epochs is not None:
        if rows is None and cfg.data.planned_rows:
            rows = cfg.data.planned_rows
            text += f"\nrows per epoch: data.planned_rows {rows:,} (data.train is not there yet)"
        if rows is None:
            text += f"\ndata.epochs {cfg.data.epochs:g}: no data and no data.planned_rows: phases[0].steps as given"
        else:
            cfg, how = with_epochs(cfg, rows)
            text += "\n" + how
    return plan_of("sft", cfg, args, repeat=seeds, extra_text=text)


def sft_objective(cfg: TrainConfig) -> SFTObjective:
    return SFTObjective(cfg.data.mask_policy, cfg.data.restart_positions)


SPEC = StageSpec("sft", config=trainer_config, data=data_sources, objective=sft_objective)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kollm sft", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="training config (YAML), e.g. recipes/tiny-sft.yaml")
    add_plan_args(p, "print the plan and the data summary, and exit")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--seeds", type=int, default=1, help="train N seeds and average them (model soup)")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value (YAML), e.g. --set data.train=chat.jsonl (repeatable)")
    args = p.parse_args(argv)
    cfg = SPEC.load(args.config, args.set)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}")

    if args.dry_run:
        return emit(dry_run(cfg, args, args.seeds), args)

    check_config(cfg, args.config)
    if not cfg.model.init_from:
        model_config(cfg)  # a preset model: fail on a bad config before loading data
    if cfg.checkpoint.export_hf and cfg.model.init_from is None:
        export_architecture(model_config(cfg))
    tokenizer = chat.load_tokenizer(tokenizer_source(cfg))
    if args.seeds > 1 and not cfg.checkpoint.export_hf:
        raise ValueError("--seeds averages the exported runs: checkpoint.export_hf must be true")
    with distributed_run(cfg.parallel) as info:
        exports, cache = [], {}
        if cfg.data.epochs is not None:
            cfg, how = with_epochs(cfg, count_rows(cfg, tokenizer, cache), args.config)
            if info.is_main:
                print(f"kollm sft: {how}", file=sys.stderr)
        for k in range(args.seeds):  # a diverged seed raises: `kollm` exits 3 with its message
            run_cfg = seed_config(cfg, k) if args.seeds > 1 else cfg
            exports.append(train_one(run_cfg, info, tokenizer, args.resume, cache))
        if args.seeds > 1 and info.is_main:
            out = soup(exports, Path(cfg.output_dir) / "hf" / "soup")
            link_latest(out)
            (Path(cfg.output_dir) / "seeds.json").write_text(json.dumps(
                {"seeds": [cfg.seed + k for k in range(args.seeds)], "runs": [str(e) for e in exports],
                 "soup": str(out), "method": "linear, uniform weights"}, indent=2) + "\n")
            print(f"kollm sft: soup of {args.seeds} seeds in {out}", file=sys.stderr)
    return 0


__all__ = ["SPEC", "main", "data_sources", "export", "seed_config", "soup", "train_one", "check_config", "dry_run"]
