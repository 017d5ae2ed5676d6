"""`kollm grpo --dry-run`: the compute plan of a GRPO run from its config alone (kollm.plan)."""

from __future__ import annotations

import math

from kollm.plan import make, part, world_of
from kollm.train.grpo_config import GRPOConfig
from kollm.train.memory import memory_plan
from kollm.train.model_setup import plan_model_config
from kollm.train.schedules import plan_phases


def dry_run(cfg: GRPOConfig, args) -> dict:
    """The kollm.plan dict: per rollout batch (every μ steps) the sampling of prompts_per_step · G
    rollouts, the old-policy pass (μ > 1) and the reference pass (β > 0); per optimizer step the
    policy's forward+backward over the batch. Rollouts are counted at max_prompt_len +
    max_new_tokens tokens (an upper bound: generation stops at the stop token)."""
    tc, g = cfg.train, cfg.grpo
    mc, notes = plan_model_config(tc)
    world, T = world_of(args), cfg.seq_len
    f = mc.flops_per_token(T)
    steps = sum(p.steps for p in plan_phases(tc, world))
    batches = math.ceil(steps / g.iterations)
    rollouts = g.prompts_per_step * g.group_size
    parts = [dict(part(f"rollouts ({batches:,} × {rollouts:,})", "generate", batches * rollouts * T, f, T),
                  rollouts=batches * rollouts)]
    if g.iterations > 1:
        parts.append(part("old-policy forward", "forward", batches * rollouts * T, f, T))
    if g.beta > 0:
        parts.append(part("reference forward", "forward", batches * rollouts * T, f, T))
    parts.append(dict(part(f"policy fwd+bwd ({steps:,} steps)", "train", steps * rollouts * T, f, T), steps=steps))
    precision = tc.parallel.mixed_precision or "bf16"
    ac = tc.parallel.activation_checkpointing
    memory = memory_plan(mc, tc.parallel.mode, world, g.micro_batch_size, T, precision, ac,
                         tc.parallel.checkpoint_every).total(ac)
    if g.beta > 0:
        memory += 4 * mc.num_params()  # the reference: a frozen fp32 copy of the initial policy per rank
    notes.append(f"{steps:,} steps × {g.prompts_per_step} prompts × G={g.group_size} at ≤ {T} tokens "
                 f"({cfg.data.max_prompt_len} prompt + {g.max_new_tokens} new); rollouts "
                 + (f"by the server {g.server} (its GPUs are extra)" if g.server else "in process")
                 + ("; the policy is exported to the server before each rollout batch (grpo.sync_weights)"
                    if g.server and g.sync_weights else "")
                 + "; memory excludes the rollout KV cache")
    return make("grpo", args, parts, memory=memory, notes=notes, params=mc.num_params(), steps=steps)


__all__ = ["dry_run"]
