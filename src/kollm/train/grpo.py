"""`kollm grpo CONFIG [--set KEY=VALUE] [--resume]`: RL with verifiable rewards (GRPO,
DeepSeekMath §4.1; the last post-training stage of the Trillion 7B report) on the one trainer.

A GRPO run is the trainer (kollm.train.trainer) with two parts swapped in:
- `RolloutSource`, the data source: every μ-th optimizer step it takes the next prompts, samples
  G completions each with the *current* policy (kollm.rl.rollout: in process, or a server by URL),
  scores them (kollm.rl.rewards), computes group-normalised advantages and, when μ > 1 or β > 0,
  the old-policy and reference log-probs; then it hands the same rollout batch to μ consecutive
  steps (GRPO's "iterations"), split into micro-batches by the trainer. Its state (prompt
  position, the rollout RNG, the rollout batch in use) is checkpointed: resume is exact. With a
  rollout server it first syncs the server's weights to the policy (kollm.rl.rollout.WeightSync,
  `grpo.sync_weights`; metrics `weight_sync_s`), and at the end of the run the server is given the
  final policy (the `hf/` export), so a server run stays on-policy as an in-process one is.
- `GRPOObjective` (kollm.train.objectives.grpo): clipped ratio, k3 KL, loss aggregation.

Config: the pretraining sections (model, optimizer, schedule, phases with `steps`, parallel,
checkpoint, logging), plus
    data: {train, validation, prompt_key, prompt_template, max_prompt_len, chat_template, val_size}
    grpo: {group_size, prompts_per_step, iterations, loss_type, epsilon, beta, max_new_tokens,
           temperature, top_p, top_k, rewards: [{name, weight, kwargs}], server, sync_weights, ...}
`batch` and each phase's `data` are derived (prompts_per_step · group_size rollouts of
max_prompt_len + max_new_tokens tokens per step) and must not be given. Rows: `{"prompt", "answer"}`
(math) or `{"prompt", "instruction_id_list", "kwargs"}` (IFEval); malformed rows are counted by
reason with file:line and skipped. At the end the policy is exported to `OUTPUT_DIR/hf/step-N`
with `OUTPUT_DIR/hf/latest` pointing at it; with `grpo.keep_best` hf/latest is the policy at the
best held-out val_reward_mean instead (ties: the later step; OUTPUT_DIR/export.json says which).
`--dry-run` prints the compute plan (rollouts, reference pass, training; kollm.plan) from the
config alone. `kollm grpo filter CONFIG --out FILE` keeps the prompts of the right difficulty for
the initial policy (kollm.train.grpo_filter; the command is kollm.train.grpo_cli).

The stage's rooms: its sections and assemble step in kollm.train.grpo_config, its data sources in
kollm.train.grpo_data, its dry run in kollm.train.grpo_plan; `SPEC` below names them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kollm.model.hf import DTYPES
from kollm.plan import add_plan_args, emit, world_of
from kollm.train.export import export_final, start_generation_config
from kollm.train.grpo_config import GRPOConfig, GRPOData, GRPOSection, grpo_config
from kollm.train.grpo_data import BestExport, build
from kollm.train.grpo_plan import dry_run
from kollm.train.objectives.grpo import GRPOObjective
from kollm.train.parallel import distributed_run, unwrap
from kollm.train.spec import StageSpec
from kollm.train.trainer import Trainer


def grpo_objective(cfg: GRPOConfig) -> GRPOObjective:
    g = cfg.grpo
    return GRPOObjective(g.loss_type, g.epsilon, g.epsilon_high, g.beta, g.max_new_tokens, g.temperature)


SPEC = StageSpec("grpo", config=grpo_config, sections={"data": GRPOData, "grpo": GRPOSection}, data=build,
                 objective=grpo_objective)


def grpo_config_from_dict(raw: dict, world: int = 1) -> GRPOConfig:
    return SPEC.from_dict(raw, world)


def load_grpo_config(path: str | Path, overrides: list[str] = (), world: int = 1) -> GRPOConfig:
    return SPEC.load(path, overrides, world)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kollm grpo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="GRPO config (YAML), e.g. recipes/tiny-grpo.yaml")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value (YAML), e.g. --set data.train=prompts.jsonl (repeatable)")
    add_plan_args(p, "print the compute plan (rollouts, reference pass, training) and exit")
    args = p.parse_args(argv)
    if args.dry_run:
        return emit(dry_run(load_grpo_config(args.config, args.set, world=world_of(args)), args), args)

    cfg = load_grpo_config(args.config, args.set, world=int(os.environ.get("WORLD_SIZE", "1")))
    tc = cfg.train
    if not tc.model.init_from:
        raise ValueError(f"{args.config}: model.init_from is required (the policy: a Hugging Face directory)")
    if not cfg.data.train:
        raise ValueError(f"{args.config}: data.train is required (prompt rows)")
    in_process = [what for what, yes in (("rollouts", not cfg.grpo.server), ("validation", cfg.data.validation and not (
        cfg.grpo.server and cfg.grpo.sync_weights))) if yes]
    if tc.parallel.mode in ("zero1", "fsdp") and cfg.grpo.keep_best:
        raise ValueError(f"{args.config}: grpo.keep_best exports the policy at a validation step from rank 0's "
                         f"whole weights; parallel.mode {tc.parallel.mode} shards them (use ddp or single)")
    if tc.parallel.mode in ("zero1", "fsdp") and in_process:
        raise ValueError(f"{args.config}: parallel.mode {tc.parallel.mode}: in-process {' and '.join(in_process)} need "
                         "whole weights on every rank between steps; use ddp, or zero1/fsdp with grpo.server "
                         "(validation: and grpo.sync_weights)")
    with distributed_run(tc.parallel) as info:
        model = SPEC.model(tc, info.device)
        trainer_model = model
        objective = SPEC.objective(cfg)
        _, source, val = SPEC.data(cfg, info, model.to(info.device))
        trainer = Trainer(tc, trainer_model, objective, source, info, val_data=val)
        if cfg.grpo.keep_best:
            source.keep_best = BestExport(trainer, unwrap(model), tc.model.tokenizer or tc.model.init_from,
                                          DTYPES[tc.checkpoint.export_dtype], start_generation_config(tc))
        if source.sync is not None:  # every update leaves the rollout server behind the policy
            trainer.optimizer.register_step_post_hook(source.sync.mark_stale)
        trainer.fit(resume=args.resume)  # a diverged run raises: `kollm` exits 3 with its message
        out = export_final(trainer, tc, tokenizer=tc.model.tokenizer or tc.model.init_from)
        if out is not None and source.keep_best is not None:
            out = source.keep_best.finish(out)
        if out is not None:
            print(f"kollm grpo: Hugging Face export in {out}", file=sys.stderr)
        if source.sync is not None:  # the server ends serving the final policy: the export when there is one
            source.sync(trainer.run_dir / "hf" / "latest" if tc.checkpoint.export_hf else None)
    return 0


__all__ = ["main", "SPEC", "load_grpo_config", "grpo_config_from_dict"]
