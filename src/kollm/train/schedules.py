"""Learning-rate schedules, the batch-size ramp and the step plan of a multi-phase run.

Warmup–stable–decay (Trillion §3.4, after Hu et al. 2024 / Hägele et al. 2024): linear warmup,
a constant peak, then over the last `decay_fraction` of the schedule's steps (or from the first
step of the phase `decay_start`: Trillion's annealing phase) the inverse-proportional
decay `lr = peak / (1 + k·s)`, s ∈ [0, 1], with k = 1/final_lr_ratio − 1 (k = 9 ends at 10 % of
peak). Cosine and linear decay to the same floor are the usual baselines.

Batch-size ramp (Trillion §3.4: "slowly increased from 1M to 2M in the first 1T tokens"): the
global batch in tokens grows linearly with tokens seen and is rounded to whole sequences,
G = round(global / seq_len), the same at every world size. The G sequences are dealt over the
ranks (the first G mod W ranks take one more), so the batch grows one sequence at a time however
many ranks there are; every rank runs the same number of micro-batches of at most the phase's
`batch_size` (gradient accumulation; collectives line up), and a rank left without a sequence in a
micro-step (G < W, e.g. 32K-token sequences on 256 ranks) runs a padding micro-batch with no target.
The loss is a token mean over the whole step (trainer), so uneven ranks weigh every token alike.
The plan is a pure function of the config and the world size, so a resumed run and the dry run
see the same phase boundaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from kollm.train.config import BatchSection, ScheduleSection, TrainConfig


def lr_at(step: int, total_steps: int, peak: float, cfg: ScheduleSection, decay_start: int | None = None) -> float:
    """LR for optimizer step `step` (0-based) of a schedule that is `total_steps` long; a wsd decay
    begins at step `decay_start` when given (the first step of `cfg.decay_start`'s phase)."""
    final = peak * cfg.final_lr_ratio
    warmup = min(cfg.warmup_steps, total_steps)
    # Progress counts the update being made, so the last step of warmup is at peak and the last
    # step of the schedule is at the floor.
    if step < warmup:
        return peak * (step + 1) / warmup
    if step >= total_steps:
        return final
    if cfg.kind == "wsd":
        if decay_start is None:
            decay_start = total_steps - round(cfg.decay_fraction * total_steps)
        start = max(decay_start, warmup)
        if step < start:
            return peak
        s = (step + 1 - start) / (total_steps - start)
        k = 1.0 / cfg.final_lr_ratio - 1.0
        return peak / (1.0 + k * s)
    p = (step + 1 - warmup) / (total_steps - warmup)
    if cfg.kind == "cosine":
        return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * p))
    if cfg.kind == "linear":
        return peak + (final - peak) * p
    raise ValueError(f"schedule.kind: unknown schedule {cfg.kind!r}")


def global_batch_tokens(batch: BatchSection, tokens_seen: int) -> int:
    if batch.ramp_from is None or batch.ramp_tokens <= 0 or tokens_seen >= batch.ramp_tokens:
        return batch.tokens
    return round(batch.ramp_from + (batch.tokens - batch.ramp_from) * tokens_seen / batch.ramp_tokens)


def global_sequences(batch: BatchSection, tokens_seen: int, seq_len: int) -> int:
    """Sequences in the next step's global batch (all ranks together): at least one."""
    return max(1, round(global_batch_tokens(batch, tokens_seen) / seq_len))


def micro_batches(batch: BatchSection, tokens_seen: int, seq_len: int, micro_bs: int, world: int,
                  rank: int = 0) -> list[int]:
    """Sequences per micro-batch on `rank` for the next step; every rank gets the same number of
    micro-batches, and a 0 is a padding micro-batch (module docstring)."""
    g = global_sequences(batch, tokens_seen, seq_len)
    n_micro = math.ceil(math.ceil(g / world) / micro_bs)
    mine = g // world + (rank < g % world)
    sizes = [mine // n_micro] * n_micro  # as even as possible: equal cost per micro-step
    for i in range(mine % n_micro):
        sizes[i] += 1
    return sizes


def _steps_at(batch: BatchSection, seen: int, seq_len: int, g: int) -> float:
    """Steps until the ramp changes the global batch from g sequences (inf: it never does again)."""
    if batch.ramp_from is None or seen >= batch.ramp_tokens or global_sequences(batch, batch.ramp_tokens, seq_len) == g:
        return math.inf
    lo, hi = seen, batch.ramp_tokens  # G(lo) == g != G(hi); G is monotone in tokens seen
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if global_sequences(batch, mid, seq_len) == g else (lo, mid)
    return math.ceil((hi - seen) / (g * seq_len))


@dataclass
class PhasePlan:
    name: str
    start_step: int
    steps: int
    tokens: int
    seq_len: int
    first_batch_tokens: int  # global batch at the phase's first and last step
    last_batch_tokens: int
    batches: list[tuple[int, int]] = field(default_factory=list)  # (first step, global sequences) per batch size

    @property
    def end_step(self) -> int:
        return self.start_step + self.steps


def plan_phases(cfg: TrainConfig, world: int) -> list[PhasePlan]:
    """Steps and tokens of every phase: runs of steps at one batch size, jumped over in closed form
    (the ramp changes the batch a few hundred times; the steps number a million)."""
    plans, step, seen = [], 0, 0
    for phase in cfg.phases:
        d = phase.data
        start, start_seen, batches = step, seen, []
        while (step - start < phase.steps) if phase.steps is not None else (seen - start_seen < phase.tokens):
            g = global_sequences(cfg.batch, seen, d.seq_len)
            per_step = g * d.seq_len
            batches.append((step, g))
            left = (phase.steps - (step - start)) if phase.steps is not None else \
                math.ceil((phase.tokens - (seen - start_seen)) / per_step)
            n = min(left, _steps_at(cfg.batch, seen, d.seq_len, g))
            step, seen = step + n, seen + n * per_step
        first, last = (batches[0][1] * d.seq_len, batches[-1][1] * d.seq_len) if batches else (0, 0)
        plans.append(PhasePlan(phase.name, start, step - start, seen - start_seen, d.seq_len, first, last, batches))
    return plans


def decay_start_step(cfg: TrainConfig, plans: list[PhasePlan]) -> int | None:
    """First step of the phase named by `schedule.decay_start` (None: decay by `decay_fraction`)."""
    return next((p.start_step for p in plans if p.name == cfg.schedule.decay_start), None)


def phase_at(plans: list[PhasePlan], step: int) -> int:
    """Index of the phase that optimizer step `step` belongs to (the last one past the end)."""
    for i, p in enumerate(plans):
        if step < p.end_step:
            return i
    return len(plans) - 1


__all__ = ["lr_at", "global_batch_tokens", "global_sequences", "micro_batches", "plan_phases", "phase_at", "PhasePlan",
           "decay_start_step"]
