"""`kollm grpo`'s config: the stage's own sections (`data:` prompt rows, `grpo:` the GRPO settings,
DeepSeekMath §4.1 / TRL's GRPOConfig names) and the assemble step that derives the trainer's
batch and phase data from them (kollm.train.grpo.SPEC)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from kollm.train.config import TrainConfig, config_from_dict
from kollm.train.objectives.grpo import LOSS_TYPES


@dataclass
class GRPOData:
    train: str = ""  # JSONL(.gz) / Parquet prompt rows
    validation: str | None = None  # held-out prompts: greedy mean reward logged as val_reward_mean
    prompt_key: str = "prompt"  # a string or an OpenAI message list
    prompt_template: str | None = None  # e.g. "{kor_question}\n답:" (str.format over the row)
    max_prompt_len: int = 256  # longer prompts are skipped (counted as prompt_too_long)
    chat_template: bool = True  # wrap the prompt as a user turn when the tokenizer has a template
    # A system turn before every prompt, through the chat template (Trillion §4: "the right system
    # prompt" is crucial; its text is not published). Needs chat_template.
    system_prompt: str | None = None
    planned_prompts: int = 0  # `kollm grpo filter --dry-run`: prompts assumed while data.train is not there
    val_size: int = 64  # validation prompts used (the first ones)


@dataclass
class GRPOSection:
    group_size: int = 8  # G samples per prompt
    prompts_per_step: int = 8  # prompts per rollout batch, all ranks together
    iterations: int = 1  # μ: optimizer steps on each rollout batch
    loss_type: str = "grpo"  # grpo | dapo | bnpo | dr_grpo
    epsilon: float = 0.2
    epsilon_high: float | None = None  # DAPO's clip-higher; None = epsilon
    beta: float = 0.0  # k3 KL to the initial policy
    scale_rewards: bool = True  # divide by the group std (Dr. GRPO: false)
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    micro_batch_size: int = 8  # rollouts per forward/backward
    rewards: list = field(default_factory=lambda: [{"name": "math"}])  # kollm.rl.rewards.RewardSpec
    server: str | None = None  # OpenAI-compatible URL for rollouts (vLLM, kollm serve); None: in process
    server_model: str = "default"
    # With a server: before every rollout batch (and at the end of the run) write the policy to
    # OUTPUT_DIR/rollout-weights and POST it to {server}/update_weights_from_disk (SGLang's API;
    # `kollm serve --allow-weight-updates --weights-root OUTPUT_DIR`), so rollouts come from the current policy. The server
    # must see OUTPUT_DIR. false: the server's weights are kept in step some other way (vLLM).
    sync_weights: bool = True
    # The export (hf/latest) is the policy at the best held-out val_reward_mean (ties: the later
    # step), not the last step's: an RL curve that peaks and falls back keeps its peak. Needs
    # data.validation; recorded in OUTPUT_DIR/export.json and said in the log.
    keep_best: bool = False


@dataclass
class GRPOConfig:
    train: TrainConfig
    data: GRPOData
    grpo: GRPOSection

    @property
    def seq_len(self) -> int:
        return self.data.max_prompt_len + self.grpo.max_new_tokens


def grpo_config(raw: dict, own: dict, world: int = 1) -> GRPOConfig:
    """The spec's assemble step: `data:` (GRPOData) and `grpo:` are built; the trainer's batch and
    each phase's data are derived from them (and must not be given)."""
    data, grpo = own["data"], own["grpo"]
    problems = []
    if "batch" in raw:
        problems.append("batch: set by grpo.prompts_per_step × grpo.group_size; remove it")
    for i, ph in enumerate(raw.get("phases") or []):
        if isinstance(ph, dict) and ph.get("data"):
            problems.append(f"phases[{i}].data: set by data.max_prompt_len + grpo.max_new_tokens and "
                            "grpo.micro_batch_size; remove it")
        if isinstance(ph, dict) and ph.get("tokens") is not None:
            problems.append(f"phases[{i}].tokens: a GRPO phase is counted in steps")
    g = grpo
    if g.group_size < 2:
        problems.append("grpo.group_size must be >= 2 (advantages are relative to the group)")
    if g.prompts_per_step < 1 or g.prompts_per_step % world:
        problems.append(f"grpo.prompts_per_step ({g.prompts_per_step}) must be a positive multiple of the "
                        f"world size ({world})")
    if g.iterations < 1 or g.micro_batch_size < 1 or g.max_new_tokens < 1 or data.max_prompt_len < 1:
        problems.append("grpo.iterations, grpo.micro_batch_size, grpo.max_new_tokens and data.max_prompt_len "
                        "must be >= 1")

    def finite(v) -> bool:
        return v is not None and math.isfinite(v)

    for key, value, ok, want in [
            ("grpo.epsilon", g.epsilon, finite(g.epsilon) and g.epsilon > 0, "a finite number > 0"),
            ("grpo.epsilon_high", g.epsilon_high, g.epsilon_high is None or finite(g.epsilon_high)
             and g.epsilon_high > 0, "a finite number > 0"),
            ("grpo.beta", g.beta, finite(g.beta) and g.beta >= 0, ">= 0 (0: no KL term)"),
            ("grpo.temperature", g.temperature, finite(g.temperature) and g.temperature > 0, "a finite number > 0"),
            ("grpo.top_p", g.top_p, finite(g.top_p) and 0 < g.top_p <= 1, "in (0, 1]"),
            ("grpo.top_k", g.top_k, g.top_k >= 0, ">= 0 (0: no top-k cut)"),
            ("data.val_size", data.val_size, data.val_size >= 1, "positive")]:
        if not ok:
            problems.append(f"{key} must be {want}, got {value!r}")
    if g.keep_best and not data.validation:
        problems.append("grpo.keep_best needs data.validation (the held-out reward it keeps the best of)")
    if g.loss_type not in LOSS_TYPES:
        problems.append(f"grpo.loss_type: one of {', '.join(LOSS_TYPES)}, got {g.loss_type!r}")
    if not isinstance(g.rewards, list) or not g.rewards:
        problems.append("grpo.rewards: a list of {name, weight, kwargs}")
    if problems:
        raise ValueError("invalid GRPO config: " + "; ".join(problems))
    seq_len = data.max_prompt_len + g.max_new_tokens
    raw["batch"] = {"tokens": g.prompts_per_step * g.group_size * seq_len}
    for ph in raw.get("phases") or []:
        if isinstance(ph, dict):
            ph["data"] = {"seq_len": seq_len, "batch_size": g.micro_batch_size}
    raw.setdefault("data", {})
    return GRPOConfig(config_from_dict(raw), data, grpo)


__all__ = ["GRPOConfig", "GRPOData", "GRPOSection", "grpo_config"]
