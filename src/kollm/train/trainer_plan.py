"""The trainer's compute plan (`--dry-run` of `kollm pretrain` and `kollm sft`): FLOPs and GPU-hours
per phase (kollm.train.flops, Trillion §3 / the 6ND count) and per-rank memory of each phase's
micro-batch (kollm.train.memory), as text and as the kollm.plan dict `kollm run --dry-run` adds up.
"""

from __future__ import annotations

from kollm.plan import make, part, world_of
from kollm.train.config import TrainConfig
from kollm.train.flops import format_plan, make_plan
from kollm.train.memory import H100_MEMORY, format_memory, memory_plan
from kollm.train.model_setup import plan_model_config
from kollm.train.schedules import micro_batches


def dry_run(cfg: TrainConfig, world: int, mfu: float, peak_flops: float, device_memory: float | None = None,
            as_plan: bool = False, pretraining: bool = True):
    """The FLOPs/GPU-hours plan, then the per-rank memory of each phase's micro-batch (kollm.train.memory).
    `as_plan`: the kollm.plan dict (parts per phase) with the text inside."""
    mc, notes = plan_model_config(cfg)
    plan = make_plan(cfg, mc, world)
    precision = cfg.parallel.mixed_precision or "bf16"  # a plan is for the GPU, where bf16 is the default
    ac, every = cfg.parallel.activation_checkpointing, cfg.parallel.checkpoint_every
    rows = [(ph.name, memory_plan(mc, cfg.parallel.mode, world, ph.data.batch_size, p.seq_len, precision,
                                  ac, every, accumulating=len(micro_batches(cfg.batch, 2**62, p.seq_len,
                                                                            ph.data.batch_size, world)) > 1))
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
    ckpt = cfg.parallel.activation_checkpointing
    parts = [dict(part(p.name, "train", p.tokens, mc.flops_per_token(p.seq_len), p.seq_len),
                  flops_6nd=6.0 * plan.params_without_mtp * p.tokens, steps=p.steps) for p in plan.phases]
    return {"parts": parts, "memory": max(m.total(ckpt) for _, m in rows), "notes": notes, "text": text,
            "params": plan.params, "params_without_mtp": plan.params_without_mtp, "steps": plan.steps}


def plan_of(stage: str, cfg: TrainConfig, args, repeat: int = 1, extra_text: str = "") -> dict:
    """The kollm.plan dict of a trainer run (pretrain, SFT; `repeat` runs of it, e.g. SFT seeds)."""
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


__all__ = ["dry_run", "plan_of"]
