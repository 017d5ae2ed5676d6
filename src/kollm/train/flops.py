"""FLOPs, MFU and the dry-run plan (`kollm pretrain CONFIG --dry-run`).

Model FLOPs per token are `6·N + 12·L·d·T` (Kaplan et al. / PaLM appendix B): N the parameters
that take part in a matmul (all but the input embedding, MTP block included), L layers (+1 with
MTP), d = heads · head_dim, T the sequence length; no credit for causal or document masking and
none for activation recomputation (that would be HFU). MFU = achieved model FLOP/s over peak.

The plan also shows the cruder `6·N·D` count with N the model's parameters without the MTP block,
which is what a headline GPU-hour figure is usually derived from, and says which one a report's
figure matches: the Trillion 7B report's 59K pre-training H100-hours (Table 1, 42.5 % MFU, §3.6)
are 6·N·D over its 2T tokens (the phases before context extension), not kollm's fuller count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kollm.model.config import ModelConfig
from kollm.model.transformer import build_model
from kollm.plan import H100_BF16_DENSE
from kollm.train.config import TrainConfig
from kollm.train.schedules import PhasePlan, plan_phases

_PEAKS = {"H100": H100_BF16_DENSE, "H200": H100_BF16_DENSE, "H800": H100_BF16_DENSE, "A100": 312e12,
          "A800": 312e12, "L40S": 362e12, "B200": 2250e12}


def default_peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak of the local accelerator; None on CPU (MFU is not reported there)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in _PEAKS.items() if k in name), None)


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float, world: int = 1) -> float:
    return tokens_per_s * flops_per_token / (peak_flops * world)


@dataclass
class RunPlan:
    params: int
    non_embedding_params: int
    params_without_mtp: int
    world: int
    phases: list[PhasePlan]
    phase_flops: list[float]  # 6N + 12·L·d·T per phase

    @property
    def tokens(self) -> int:
        return sum(p.tokens for p in self.phases)

    @property
    def steps(self) -> int:
        return sum(p.steps for p in self.phases)

    @property
    def flops(self) -> float:
        return sum(self.phase_flops)

    @property
    def flops_6nd(self) -> float:
        return 6 * self.params_without_mtp * self.tokens

    @property
    def pretrain_phases(self) -> list[PhasePlan]:
        """The phases before context extension (a longer seq_len than the first phase's)."""
        longer = [i for i, p in enumerate(self.phases) if p.seq_len > self.phases[0].seq_len]
        return self.phases[:longer[0]] if longer else self.phases

    @staticmethod
    def gpu_hours(flops: float, mfu_: float, peak_flops: float) -> float:
        return flops / (mfu_ * peak_flops) / 3600


def make_plan(cfg: TrainConfig, model_cfg: ModelConfig, world: int = 1) -> RunPlan:
    model = build_model(model_cfg, device="meta")  # shapes only: an 8B plan costs no memory
    n = sum(p.numel() for p in model.parameters())
    if n != model_cfg.num_params():
        raise AssertionError(f"built model has {n} parameters, ModelConfig counts {model_cfg.num_params()}")
    phases = plan_phases(cfg, world)
    flops = [float(model_cfg.flops_per_token(p.seq_len)) * p.tokens for p in phases]
    return RunPlan(n, model_cfg.num_non_embedding_params(), model_cfg.num_params(include_mtp=False), world,
                   phases, flops)


def _h(x: float) -> str:
    for unit, v in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= v:
            return f"{x / v:.3g}{unit}"
    return f"{x:.3g}"


def format_plan(plan: RunPlan, mfu_: float, peak_flops: float, pretraining: bool = True) -> str:
    """The plan's table; `pretraining` adds the comparison with the report's pre-training hours
    (not for a post-training stage, whose one phase is not "pre-training")."""
    lines = [
        f"parameters        {plan.params:,} ({plan.non_embedding_params:,} non-embedding; "
        f"{plan.params_without_mtp:,} without the MTP block)",
        f"world size        {plan.world} (steps assume this many ranks)",
        "",
        f"{'phase':<16}{'steps':>12}{'tokens':>10}{'seq':>8}{'batch (tokens)':>18}{'FLOPs':>12}{'GPU-h':>10}"
        f"{'GPU-h 6ND':>11}",
    ]
    for p, f in zip(plan.phases, plan.phase_flops):
        batch = _h(p.first_batch_tokens) + ("" if p.first_batch_tokens == p.last_batch_tokens
                                            else f"→{_h(p.last_batch_tokens)}")
        lines.append(f"{p.name:<16}{p.steps:>12,}{_h(p.tokens):>10}{p.seq_len:>8}{batch:>18}{f:>12.3e}"
                     f"{plan.gpu_hours(f, mfu_, peak_flops):>10,.0f}"
                     f"{plan.gpu_hours(6 * plan.params_without_mtp * p.tokens, mfu_, peak_flops):>11,.0f}")
    pre = plan.pretrain_phases
    pre_tokens = sum(p.tokens for p in pre)
    pre_flops = sum(f for p, f in zip(plan.phases, plan.phase_flops) if p in pre)
    h_kollm, h_6nd = (plan.gpu_hours(x, mfu_, peak_flops) for x in (pre_flops, 6 * plan.params_without_mtp * pre_tokens))
    names = "+".join(p.name for p in pre)
    lines += [
        f"{'total':<16}{plan.steps:>12,}{_h(plan.tokens):>10}{'':>8}{'':>18}{plan.flops:>12.3e}"
        f"{plan.gpu_hours(plan.flops, mfu_, peak_flops):>10,.0f}"
        f"{plan.gpu_hours(plan.flops_6nd, mfu_, peak_flops):>11,.0f}",
        "",
        f"GPU-hours at MFU {mfu_:.1%} of {peak_flops / 1e12:,.0f} TFLOP/s, all phases:",
        f"  6N + 12·L·d·T (kollm's MFU count)  {plan.gpu_hours(plan.flops, mfu_, peak_flops):>12,.0f}",
        f"  6·N·D (N without MTP)              {plan.gpu_hours(plan.flops_6nd, mfu_, peak_flops):>12,.0f}",
    ]
    if pretraining:
        lines += [
        f"Pre-training before context extension ({names}, {_h(pre_tokens)} tokens):",
        f"  6N + 12·L·d·T (kollm's MFU count)  {h_kollm:>12,.0f}",
        f"  6·N·D (report-comparable)          {h_6nd:>12,.0f}",
        "  The Trillion 7B report's 59K pre-training H100-hours (Table 1, 2T tokens, 42.5 % MFU) match 6·N·D;",
        f"  kollm's count adds attention and the MTP block ({h_kollm / h_6nd - 1:+.1%} here).",
        ]
    notes = []
    for p in plan.phases:
        gs = [g for _, g in p.batches]
        if len(gs) > 1:
            notes.append(f"{p.name}: the batch ramps {_h(p.first_batch_tokens)}→{_h(p.last_batch_tokens)} tokens in "
                         f"{len(gs)} sizes, {max(abs(b - a) for a, b in zip(gs, gs[1:]))} sequence(s) of {p.seq_len} "
                         f"at a time (whole sequences dealt over the {plan.world} ranks)")
        if gs and min(gs) < plan.world:
            notes.append(f"{p.name}: {min(gs)} sequences per step on {plan.world} ranks: {plan.world - min(gs)} ranks "
                         "run a padding micro-batch (no target) each step; the report ran this stage with tensor "
                         f"parallelism, which kollm lacks: plan it on ≤ {min(gs)} ranks or accept the idle ones")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


__all__ = ["mfu", "default_peak_flops", "make_plan", "format_plan", "RunPlan", "H100_BF16_DENSE"]
