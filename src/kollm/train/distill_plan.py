"""`kollm distill --dry-run` (and `precompute --dry-run`): the compute plan from the config alone
(kollm.plan): the student's training and the teacher's forward pass, whose shapes come from its
config.json or `--teacher-preset`."""

from __future__ import annotations

from pathlib import Path

from kollm.model.config import get_preset
from kollm.model.hf import config_from_hf, read_config
from kollm.plan import human, make, part, world_of
from kollm.train.distill_config import DistillConfig, seq_len
from kollm.train.memory import memory_plan
from kollm.train.model_setup import plan_model_config
from kollm.train.schedules import plan_phases


# -- dry run ---------------------------------------------------------------------------------------
def teacher_config(cfg: DistillConfig, preset: str | None):
    """The teacher's shapes: its config.json, else the dry run's --teacher-preset; None if neither."""
    if cfg.teacher.model and (Path(cfg.teacher.model) / "config.json").is_file():
        return config_from_hf(read_config(cfg.teacher.model))
    return get_preset(preset) if preset else None


def dry_run(cfg: DistillConfig, args, precompute_only: bool = False) -> dict:
    """The kollm.plan dict. `kollm distill`: the student's forward+backward over the trained tokens,
    plus the teacher's forward over the same tokens when it runs online (teacher.model); with
    teacher.stored that pass belongs to `kollm distill precompute` (`precompute_only`), which is
    planned over the trained tokens too (the dataset read once: one epoch)."""
    mc, notes = plan_model_config(cfg.train)
    world = world_of(args)
    phases = plan_phases(cfg.train, world)
    tokens = sum(p.tokens for p in phases)
    tc = teacher_config(cfg, getattr(args, "teacher_preset", None))
    teacher_parts, teacher_mem = [], 0.0
    if tc is None:
        notes.append(f"teacher shapes unknown ({cfg.teacher.model or 'no teacher.model'} has no config.json): pass "
                     "--teacher-preset to plan its forward pass")
    else:
        teacher_parts = [part(f"teacher forward ({tc.num_params() / 1e9:.0f}B)", "forward", p.tokens,
                              tc.flops_per_token(p.seq_len), p.seq_len) for p in phases]
        teacher_mem = 2 * tc.num_params()  # bf16 weights, whole on each rank (kollm does not shard the teacher)
    if precompute_only:
        notes.append(f"teacher top-{cfg.teacher.top_k} log-probs of the dataset's responses, in one process")
        return make("distill precompute", args, teacher_parts, memory=teacher_mem or None, notes=notes,
                    bytes_written=int(tokens * (8 * cfg.teacher.top_k + 4)))
    precision = cfg.train.parallel.mixed_precision or "bf16"
    ckpt = cfg.train.parallel.activation_checkpointing
    memory = max(memory_plan(mc, cfg.train.parallel.mode, world, ph.data.batch_size, p.seq_len, precision,
                             ckpt, cfg.train.parallel.checkpoint_every).total(ckpt) for ph, p in zip(cfg.train.phases, phases))
    parts = [dict(part(f"student fwd+bwd ({p.name})", "train", p.tokens, mc.flops_per_token(p.seq_len), p.seq_len),
                  steps=p.steps) for p in phases]
    if cfg.teacher.stored:
        notes.append(f"teacher.stored {cfg.teacher.stored}: its forward pass is `kollm distill precompute`'s")
    else:
        parts += teacher_parts
        memory += teacher_mem
    if cfg.distill.off_policy:
        gen = sum(p.tokens for p in phases) * cfg.distill.max_new_tokens / seq_len(cfg.train)
        notes.append(f"adaptive off-policy: student generations (≤ {human(gen)} new tokens if every batch were "
                     "generated, plus the teacher's pass over them) depend on validation and are not in the total")
    return make("distill", args, parts, memory=memory, notes=notes, params=mc.num_params())


__all__ = ["teacher_config", "dry_run"]
