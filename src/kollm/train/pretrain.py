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
import sys

from kollm.data.loader import HeldOutBatches, PretrainLoader
from kollm.model.hf import export_architecture
from kollm.plan import add_plan_args, emit
from kollm.train.config import TrainConfig, trainer_config
from kollm.train.export import export_final
from kollm.train.model_setup import model_config
from kollm.train.objectives.lm import LMObjective
from kollm.train.parallel import distributed_run
from kollm.train.spec import StageSpec
from kollm.train.trainer import Trainer
from kollm.train.trainer_plan import plan_of


def check_vocabulary(data, vocab_size: int, shards: str) -> None:
    """Shards from another tokenizer would fail deep in the embedding with an index error."""
    ids = {lang: c.max_token_id for lang, c in data.corpora.items() if c.max_token_id is not None}
    if ids and max(ids.values()) >= vocab_size:
        lang = max(ids, key=ids.get)
        raise ValueError(f"{shards}: {lang} token ids reach {ids[lang]} but the model has {vocab_size} embedding "
                         "rows; set model.tokenizer to the tokenizer that made the shards")


def pretrain_data(cfg: TrainConfig, info, vocab_size: int) -> tuple[PretrainLoader, HeldOutBatches | None]:
    """XLDA-packed token shards (kollm.data.loader) and the held-out batches of data.validation."""
    data = PretrainLoader(cfg.data.shards, cfg.phases[0].data, seed=cfg.seed, rank=info.rank,
                          world_size=info.world, block_size=cfg.data.block_size)
    check_vocabulary(data, vocab_size, cfg.data.shards)
    val = None
    if cfg.data.validation:
        first = cfg.phases[0].data
        val = HeldOutBatches(cfg.data.validation, first, cfg.validation.batches,
                             cfg.validation.batch_size or first.batch_size, data.langs, rank=info.rank,
                             world_size=info.world, block_size=cfg.data.block_size)
        if val.max_token_id is not None and val.max_token_id >= vocab_size:
            raise ValueError(f"{cfg.data.validation}: token ids reach {val.max_token_id} but the model has "
                             f"{vocab_size} embedding rows (shards from another tokenizer?)")
    return data, val


def pretrain_objective(cfg: TrainConfig, langs: list[str]) -> LMObjective:
    return LMObjective(cfg.data.mask_policy, cfg.data.restart_positions, langs=langs)


SPEC = StageSpec("pretrain", config=trainer_config, data=pretrain_data, objective=pretrain_objective)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kollm pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="training config (YAML), e.g. recipes/tiny-pretrain.yaml")
    add_plan_args(p, "print the plan (meta device) and exit")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value (YAML), e.g. --set data.shards=runs/x/shards (repeatable)")
    args = p.parse_args(argv)
    cfg = SPEC.load(args.config, args.set)

    if args.dry_run:
        return emit(plan_of("pretrain", cfg, args), args)

    if not cfg.data.shards:
        raise ValueError(f"{args.config}: data.shards is required to train (a `kollm data tokenize` output)")
    if cfg.checkpoint.export_hf:
        export_architecture(model_config(cfg))  # an unexportable model fails now, not after training
    with distributed_run(cfg.parallel) as info:
        model = SPEC.model(cfg, info.device)
        data, val = SPEC.data(cfg, info, model.config.vocab_size)
        objective = SPEC.objective(cfg, data.langs)
        trainer = Trainer(cfg, model, objective, data, info, val_data=val)
        trainer.fit(resume=args.resume)  # a diverged run raises: `kollm` exits 3 with its message
        if (out := export_final(trainer, cfg)) is not None:
            print(f"kollm pretrain: Hugging Face export in {out}", file=sys.stderr)
    return 0


__all__ = ["SPEC", "main", "check_vocabulary", "pretrain_data", "pretrain_objective"]
