"""`kollm distill`'s config: the stage's own sections (`teacher:` where the teacher's logits come
from, `distill:` the divergence and DistiLLM's adaptive off-policy schedule, Ko et al. 2024) beside
the trainer's, checked as strictly (kollm.train.distill.SPEC)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kollm.train.config import TrainConfig, config_from_dict


@dataclass
class TeacherSection:
    """Distillation teacher: a Hugging Face directory with the student's tokenizer (run here,
    without gradients, bf16 on CUDA), or top-k log-probs stored by `kollm distill precompute`."""

    model: str | None = None
    stored: str | None = None  # precompute output directory (offline distillation)
    top_k: int = 64  # precompute: teacher log-probs kept per response token
    dtype: str = "bfloat16"  # the online teacher's weights on CUDA (CPU: float32)
    # The teacher behind a vLLM OpenAI-compatible server (`/v1/completions` with `prompt_logprobs`):
    # top-k of the student's generated samples when the dataset's come from `stored` (a teacher
    # too large to sit beside the student; recipes/dna-8b-distill.yaml)
    server: str | None = None
    server_model: str = "default"


@dataclass
class DistillSection:
    """kollm distill: the divergence (kollm.train.objectives.distill) and DistiLLM's adaptive
    off-policy schedule (kollm.train.distill_data)."""

    loss: str = "skl"  # fkl | rkl | skl | srkl
    alpha: float = 0.1  # skew α
    ce_weight: float = 0.0  # loss = (1 − w)·divergence + w·cross-entropy on the responses
    off_policy: bool = True  # adaptive: P(student-generated batch) starts at `off_policy_init`, rises on validation
    off_policy_rule: str = "distillm"  # distillm | kollm: when P rises (kollm.train.distill_data.DistillData.on_validation)
    off_policy_init: float = 0.0
    off_policy_step: float = 0.1
    off_policy_margin: float = 0.1  # distillm: its loss_eps (0.1); kollm: the improvement asked for (0: any stall)
    replay_capacity: int = 1000  # generated samples kept per rank
    replay_ratio: str = "decreasing"  # DistiLLM's: fresh share of off-policy batches 1 − step/total | constant | increasing
    fresh_prob: float = 0.5  # replay_ratio constant: the fresh share (DistiLLM: 0.5)
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


@dataclass
class DistillConfig:
    train: TrainConfig
    teacher: TeacherSection
    distill: DistillSection


def _range_problems(t: TeacherSection, d: DistillSection) -> list[str]:
    """Values outside their meaningful range, each naming its key (as kollm.train.config's)."""
    def finite(v) -> bool:
        return v is not None and math.isfinite(v)

    def unit(v) -> bool:
        return finite(v) and 0 <= v <= 1

    rules: list[tuple[str, object, bool, str]] = [
        ("teacher.top_k", t.top_k, t.top_k > 0, "positive"),
        ("distill.alpha", d.alpha, unit(d.alpha), "in [0, 1]"),
        ("distill.ce_weight", d.ce_weight, unit(d.ce_weight), "in [0, 1]"),
        ("distill.off_policy_init", d.off_policy_init, unit(d.off_policy_init), "in [0, 1]"),
        ("distill.off_policy_step", d.off_policy_step, unit(d.off_policy_step), "in [0, 1]"),
        ("distill.off_policy_margin", d.off_policy_margin, finite(d.off_policy_margin), "a finite number"),
        ("distill.fresh_prob", d.fresh_prob, unit(d.fresh_prob), "in [0, 1]"),
        ("distill.replay_capacity", d.replay_capacity, d.replay_capacity >= 0, ">= 0"),
        ("distill.max_new_tokens", d.max_new_tokens, d.max_new_tokens > 0, "positive"),
        ("distill.temperature", d.temperature, finite(d.temperature) and d.temperature > 0, "a finite number > 0"),
        ("distill.top_p", d.top_p, finite(d.top_p) and 0 < d.top_p <= 1, "in (0, 1]"),
        ("distill.top_k", d.top_k, d.top_k >= 0, ">= 0 (0: no top-k cut)"),
    ]
    return [f"{key} must be {want}, got {value!r}" for key, value, ok, want in rules if not ok]


def distill_config(raw: dict, own: dict, world: int = 1) -> DistillConfig:
    """The spec's assemble step: `teacher:` and `distill:` are built; the rest is the trainer's."""
    teacher, distill = own["teacher"], own["distill"]
    if problems := _range_problems(teacher, distill):
        raise ValueError("invalid distillation config: " + "; ".join(problems))
    return DistillConfig(config_from_dict(raw), teacher, distill)


def student_tokenizer_path(cfg: TrainConfig) -> str:
    path = cfg.model.tokenizer or cfg.model.init_from
    if not path:
        raise ValueError("model.tokenizer or model.init_from must name the student's tokenizer")
    return path


def seq_len(cfg: TrainConfig) -> int:
    return max(p.data.seq_len for p in cfg.phases)


__all__ = ["TeacherSection", "DistillSection", "DistillConfig", "distill_config", "student_tokenizer_path", "seq_len"]
