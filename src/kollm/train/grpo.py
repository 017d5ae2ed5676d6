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
"""

from __future__ import annotations

import argparse
import base64
import copy
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from kollm.argtypes import apply_overrides, config_text
from kollm.data.chat import encode_prompt
from kollm.train.config import TrainConfig, _build, config_from_dict


# -- config --------------------------------------------------------------------------------------
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


def grpo_config_from_dict(raw: dict, world: int = 1) -> GRPOConfig:
    raw = copy.deepcopy(raw)
    data = _build(GRPOData, raw.pop("data", {}) or {}, "data")
    grpo = _build(GRPOSection, raw.pop("grpo", {}) or {}, "grpo")
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
    from kollm.train.objectives.grpo import LOSS_TYPES

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


def load_grpo_config(path: str | Path, overrides: list[str] = (), world: int = 1) -> GRPOConfig:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such GRPO config")
    try:
        raw = yaml.safe_load(config_text(path))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping")
    apply_overrides(raw, list(overrides))
    try:
        return grpo_config_from_dict(raw, world)
    except (KeyError, ValueError) as e:
        raise type(e)(f"{path}: {e.args[0] if e.args else e}") from None


# -- prompts -------------------------------------------------------------------------------------
class PromptSet:
    """Prompt rows tokenised once: `ids[i]` the prompt tokens, `rows[i]` the row the rewards see.
    Malformed rows are counted by reason with file:line (kollm.data.chat.RowErrors) and skipped."""

    def __init__(self, spec: str | Path, tokenizer, data: GRPOData, needs: set[str], limit: int | None = None):
        from kollm.data.chat import RowErrors, data_files, iter_rows

        self.rows, self.ids, self.errors = [], [], RowErrors()
        for f in data_files(spec):
            for line, row, reason in iter_rows(f):
                if row is not None:
                    reason = self._add(row, tokenizer, data, needs)
                if reason:
                    self.errors.add(reason, f, line)
                if limit is not None and len(self.rows) >= limit:
                    break
        if not self.rows:
            raise ValueError(f"{spec}: no usable prompt rows ({self.errors.summary()})")

    def _add(self, row, tokenizer, data: GRPOData, needs: set[str]) -> str | None:
        if not isinstance(row, dict):
            return "not_an_object"
        try:
            prompt = data.prompt_template.format(**row) if data.prompt_template else row[data.prompt_key]
        except (KeyError, IndexError):
            return "template_field_missing" if data.prompt_template else f"no_{data.prompt_key}"
        if not prompt or not isinstance(prompt, str | list):
            return "empty_prompt"
        if isinstance(prompt, list):  # messages: a role the chat template does not know is a bad row
            from kollm.data.chat import BadRow, check_messages

            try:
                prompt = check_messages(prompt)
            except BadRow as e:
                return e.reason
        if needs and not any(row.get(k) is not None for k in needs):  # nothing a reward could score
            return f"no_{'_or_'.join(sorted(needs))}"
        ids = encode_prompt(tokenizer, prompt, data.chat_template, data.system_prompt)
        if len(ids) > data.max_prompt_len:
            return "prompt_too_long"
        self.rows.append({**row, "prompt": prompt})
        self.ids.append(ids)
        return None

    def summary(self) -> str:
        return self.errors.summary()

    @property
    def bad(self) -> dict[str, int]:
        return dict(self.errors.counts)

    def __len__(self) -> int:
        return len(self.rows)


def reward_fields(specs: list) -> set[str]:
    names = {s["name"] if isinstance(s, dict) else s.name for s in specs}
    return ({"answer"} if "math" in names else set()) | ({"instruction_id_list"} if "ifeval" in names else set())


# -- the data source -----------------------------------------------------------------------------
def _encode_tensor(t: torch.Tensor) -> dict:
    a = t.detach().cpu().contiguous()
    return {"dtype": str(a.dtype).removeprefix("torch."), "shape": list(a.shape),
            "data": base64.b64encode(a.numpy().tobytes()).decode()}


def _decode_tensor(d: dict) -> torch.Tensor:
    a = np.frombuffer(base64.b64decode(d["data"]), dtype=np.dtype(d["dtype"])).reshape(d["shape"])
    return torch.from_numpy(a.copy())


class RolloutSource:
    """The trainer's data source for GRPO (see the module docstring)."""

    def __init__(self, policy, tokenizer, prompts: PromptSet, cfg: GRPOConfig, rewards, engine,
                 reference=None, rank: int = 0, world: int = 1, seed: int = 0, device=None,
                 autocast: bool = False, sync=None):
        self.policy, self.tokenizer, self.prompts, self.cfg = policy, tokenizer, prompts, cfg
        self.row_errors = prompts.errors  # the trainer reports them (bad_rows.json, end of the run)
        self.sync = sync  # kollm.rl.rollout.WeightSync: the rollout server's weights := the policy
        self.rewards, self.engine, self.reference = rewards, engine, reference
        self.rank, self.world, self.seed = rank, world, seed
        self.device = device or torch.device("cpu")
        self.autocast = autocast  # the trainer's (parallel.uses_autocast): old/ref log-probs as the policy's
        self.per_rank = cfg.grpo.prompts_per_step // world
        self.epoch, self.pos = 0, 0  # global prompt position within the epoch's permutation
        self.gen = torch.Generator().manual_seed(seed * 1000003 + rank)
        self.buffer: dict[str, torch.Tensor] | None = None
        self.cursor, self.iteration = 0, 0
        self.keep_best: BestExport | None = None  # grpo.keep_best (set by `main`)

    # protocol ------------------------------------------------------------------------------------
    def set_phase(self, phase) -> None:
        pass

    def next_batch(self, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        if self.buffer is None:
            self.buffer = self.rollout()
            self.cursor, self.iteration = 0, 0
        n = len(self.buffer["input_ids"])
        b = batch_size or n
        out = {k: v[self.cursor:self.cursor + b] for k, v in self.buffer.items()}
        if self.iteration and "weight_sync_s" in out:  # the sync happened once, before the first pass
            out["weight_sync_s"] = torch.zeros_like(out["weight_sync_s"])
        self.cursor += b
        if self.cursor >= n:
            self.cursor, self.iteration = 0, self.iteration + 1
            if self.iteration >= self.cfg.grpo.iterations:
                self.buffer = None
        return out

    def on_validation(self, metrics: dict) -> None:
        if self.keep_best is not None:
            self.keep_best.see(metrics)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "cursor": self.cursor, "iteration": self.iteration,
                "best": None if self.keep_best is None else self.keep_best.best,
                "gen": base64.b64encode(self.gen.get_state().numpy().tobytes()).decode(),
                "buffer": None if self.buffer is None else {k: _encode_tensor(v) for k, v in self.buffer.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos, self.cursor, self.iteration = state["epoch"], state["pos"], state["cursor"], \
            state["iteration"]
        self.gen.set_state(torch.frombuffer(bytearray(base64.b64decode(state["gen"])), dtype=torch.uint8))
        buf = state["buffer"]
        self.buffer = None if buf is None else {k: _decode_tensor(v) for k, v in buf.items()}
        if self.keep_best is not None:
            self.keep_best.best = state.get("best")


    # rollouts ------------------------------------------------------------------------------------
    def _next_prompts(self) -> list[int]:
        """This rank's share of the next prompts_per_step prompts (a fresh permutation each epoch)."""
        n, step = len(self.prompts), self.cfg.grpo.prompts_per_step
        out = []
        for k in range(step):
            if self.pos >= n:
                self.epoch, self.pos = self.epoch + 1, 0
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
            if k % self.world == self.rank:
                out.append(int(order[self.pos]))
            self.pos += 1
        return out

    def rollout(self) -> dict[str, torch.Tensor]:
        from kollm.rl.rollout import pad_rollouts
        from kollm.train.objectives.grpo import group_advantages

        G = self.cfg.grpo.group_size
        idx = self._next_prompts()
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.gen))
        prompt_ids = [self.prompts.ids[i] for i in idx]
        sync_s = self.sync() if self.sync is not None else None  # 0 when a validation pass just synced
        samples = self.engine.sample(prompt_ids, G, seed)
        rows, prompts, completions = [], [], []
        for i, group in zip(idx, samples):
            for c in group:
                rows.append(self.prompts.rows[i])
                prompts.append(self.prompts.ids[i])
                completions.append(c)
        texts = [self.tokenizer.decode(c, skip_special_tokens=True) for c in completions]
        rewards, parts = self.rewards(texts, rows)
        r = torch.tensor(rewards, dtype=torch.float32)
        adv = group_advantages(r, G, scale=self.cfg.grpo.scale_rewards)
        ids, mask = pad_rollouts(prompts, completions, pad_id=0)
        batch = {"input_ids": ids, "completion_mask": mask, "advantages": adv, "rewards": r,
                 # the std over this rank's rollouts, TRL's `reward_std`; each row carries it so
                 # that the objective's per-row shares sum to it
                 "reward_std": torch.full_like(r, float(r.std()) if len(r) > 1 else 0.0)}
        if sync_s is not None:  # each row carries it: the objective's per-row shares sum to the mean over ranks
            batch["weight_sync_s"] = torch.full_like(r, sync_s)
        if len(parts) > 1:  # each reward's own mean (metrics `reward_<name>`; 0 where it does not apply)
            for name, vals in parts.items():
                batch[f"reward_{name}"] = torch.tensor([0.0 if v is None else v for v in vals])
        if self.cfg.grpo.iterations > 1:
            batch["old_logps"] = self._logps(self.policy, ids)
        if self.reference is not None:
            batch["ref_logps"] = self._logps(self.reference, ids)
        return batch

    @torch.no_grad()
    def _logps(self, model, ids: torch.Tensor) -> torch.Tensor:
        from kollm.train.objectives.grpo import token_logps_head

        was = model.training
        model.eval()
        out = []
        mb = self.cfg.grpo.micro_batch_size
        try:
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.autocast):
                for s in range(0, len(ids), mb):
                    x = ids[s:s + mb].to(self.device)
                    # the training forward's chunked head: the ratio at step 0 is exactly 1
                    out.append(model(x, head=token_logps_head(x, self.cfg.grpo.temperature)).head.cpu())
        finally:
            model.train(was)
        return torch.cat(out)


class BestExport:
    """grpo.keep_best: each validation at least as good as the best so far (ties: the later) exports
    the policy to OUTPUT_DIR/hf/step-N at once (the previous best's export is removed; the rank-0
    policy holds whole weights: in-process validation needs them), so `finish` can point hf/latest
    at it. `best` = [step, val_reward_mean] is checkpointed with the data source: a resumed run
    keeps comparing against it, and its export is on disk already."""

    def __init__(self, trainer, policy, tokenizer, dtype: torch.dtype, generation_config: dict | None):
        self.trainer, self.policy, self.tokenizer = trainer, policy, tokenizer
        self.dtype, self.generation_config = dtype, generation_config
        self.best: list | None = None

    def _dir(self, step: int) -> Path:
        return self.trainer.run_dir / "hf" / f"step-{step:08d}"

    def see(self, metrics: dict) -> None:
        import shutil

        from kollm.model.hf import save_hf

        value, step = metrics.get("val_reward_mean"), self.trainer.step
        if value is None or (self.best is not None and value < self.best[1]):
            return
        previous, self.best = self.best, [step, float(value)]
        if not self.trainer.info.is_main:
            return
        out = self._dir(step)
        shutil.rmtree(out, ignore_errors=True)  # a resumed run re-validating a step it had not checkpointed
        save_hf(self.policy, out, tokenizer=self.tokenizer, dtype=self.dtype, generation_config=self.generation_config)
        if previous is not None and previous[0] != step:
            shutil.rmtree(self._dir(previous[0]), ignore_errors=True)

    def finish(self, last: Path) -> Path:
        """After export_final (`last`: the last step's export): hf/latest := the best validation
        step's export; OUTPUT_DIR/export.json says which step and why. Returns the export."""
        import json

        from kollm.train.export import link_latest

        last_step = self.trainer.step
        last_val = next((r["val_reward_mean"] for r in reversed(self.trainer.history)
                         if r.get("step") == last_step and "val_reward_mean" in r), None)
        if self.best is None or self.best[0] == last_step:
            chosen = last
        else:
            chosen = self._dir(self.best[0])
            link_latest(chosen)
        record = {"export": chosen.name, "rule": "grpo.keep_best: the best val_reward_mean (ties: the later step)",
                  "best_step": None if self.best is None else self.best[0],
                  "best_val_reward_mean": None if self.best is None else self.best[1],
                  "last_step": last_step, "last_val_reward_mean": last_val}
        (self.trainer.run_dir / "export.json").write_text(json.dumps(record, indent=1) + "\n")
        if self.best is not None:
            print(f"kollm grpo: grpo.keep_best: hf/latest is step {self.best[0]} (val_reward_mean "
                  f"{self.best[1]:.4f}; last step {last_step}"
                  + (f": {last_val:.4f}" if last_val is not None else "") + ")", file=sys.stderr)
        return chosen


@torch.no_grad()
def mean_reward(model, tokenizer, prompts: PromptSet, rewards, max_new_tokens: int, stop_ids: list[int],
                batch_size: int = 32) -> float:
    """Greedy completions of every prompt, mean reward: the held-out number a run reports."""
    from kollm.model.generate import GenerationConfig, generate

    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, stop_token_ids=stop_ids)
    total = 0.0
    for s in range(0, len(prompts), batch_size):
        outs = generate(model, prompts.ids[s:s + batch_size], cfg)
        texts = [tokenizer.decode(o, skip_special_tokens=True) for o in outs]
        vals, _ = rewards(texts, prompts.rows[s:s + batch_size])
        total += sum(vals)
    return total / len(prompts)


class ValidationSource:
    """Held-out prompts for the trainer's validation loop: `batches()` generates greedy completions
    with the current policy (in process, or by the rollout server after a weight sync) and yields
    rollout batches, so the objective reports `reward_mean` on them (metrics.jsonl: `val_reward_mean`)."""

    def __init__(self, policy, tokenizer, prompts: PromptSet, rewards, max_new_tokens: int, stop_ids: list[int],
                 batch_size: int = 16, server=None, sync=None):
        self.policy, self.tokenizer, self.prompts, self.rewards = policy, tokenizer, prompts, rewards
        self.row_errors = prompts.errors
        self.max_new_tokens, self.stop_ids, self.batch_size = max_new_tokens, stop_ids, batch_size
        # With a synced rollout server (ServerRollout at temperature 0) the greedy completions come
        # from it: under FSDP no rank holds whole weights to generate with.
        self.server, self.sync = server, sync

    def batches(self):
        from kollm.model.generate import GenerationConfig, generate
        from kollm.rl.rollout import pad_rollouts

        cfg = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=False, stop_token_ids=self.stop_ids)
        for s in range(0, len(self.prompts), self.batch_size):
            ids = self.prompts.ids[s:s + self.batch_size]
            if self.server is not None:
                self.sync()
                outs = [group[0] for group in self.server.sample(ids, 1, None)]
            else:
                outs = generate(self.policy, ids, cfg)
            texts = [self.tokenizer.decode(o, skip_special_tokens=True) for o in outs]
            vals, _ = self.rewards(texts, self.prompts.rows[s:s + self.batch_size])
            x, mask = pad_rollouts(ids, outs)
            r = torch.tensor(vals, dtype=torch.float32)
            yield {"input_ids": x, "completion_mask": mask, "advantages": torch.zeros_like(r), "rewards": r,
                   "reward_std": torch.full_like(r, float(r.std()) if len(r) > 1 else 0.0)}


# -- the command ---------------------------------------------------------------------------------
def build(cfg: GRPOConfig, info, model):
    """Tokenizer, prompts, rewards, rollout engine, data and validation sources for a run."""
    from kollm.data.chat import load_tokenizer, stop_token_ids
    from kollm.model.generate import GenerationConfig
    from kollm.model.hf import DTYPES
    from kollm.rl.rewards import Rewards
    from kollm.rl.rollout import LocalRollout, ServerRollout, WeightSync
    from kollm.train.parallel import unwrap, uses_autocast

    tc, g = cfg.train, cfg.grpo
    tok_dir = tc.model.tokenizer or tc.model.init_from
    tokenizer = load_tokenizer(tok_dir)
    rewards = Rewards(g.rewards)
    needs = reward_fields(g.rewards)
    train = PromptSet(cfg.data.train, tokenizer, cfg.data, needs)
    if train.errors.total and info.is_main:
        print(f"kollm grpo: {cfg.data.train}: {train.summary()}", file=sys.stderr)
    stops = sorted(set(stop_token_ids(tokenizer, tc.model.init_from)))  # a server rollout that drops its stop token gets the first
    gen = GenerationConfig(max_new_tokens=g.max_new_tokens, do_sample=True, temperature=g.temperature,
                           top_p=g.top_p, top_k=g.top_k, stop_token_ids=stops)
    policy = unwrap(model)
    engine = ServerRollout(g.server, tokenizer, gen, g.server_model) if g.server else LocalRollout(policy, gen)
    sync = None
    if g.server and g.sync_weights:
        sync = WeightSync(engine, policy, Path(tc.output_dir) / "rollout-weights", DTYPES[tc.checkpoint.export_dtype],
                          tok_dir, info.rank, gather=tc.parallel.mode in ("zero1", "fsdp"))
    reference = None
    if g.beta > 0:
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
    source = RolloutSource(policy, tokenizer, train, cfg, rewards, engine, reference, info.rank, info.world,
                           tc.seed, info.device,
                           uses_autocast(tc.parallel.mixed_precision, tc.parallel.mode, info.device), sync)
    val = None
    if cfg.data.validation:
        held = PromptSet(cfg.data.validation, tokenizer, cfg.data, needs, limit=cfg.data.val_size)
        greedy = ServerRollout(g.server, tokenizer, replace(gen, do_sample=False), g.server_model) if sync else None
        val = ValidationSource(policy, tokenizer, held, rewards, g.max_new_tokens, stops, server=greedy, sync=sync)
    return tokenizer, source, val


def dry_run(cfg: GRPOConfig, args) -> dict:
    """The kollm.plan dict: per rollout batch (every μ steps) the sampling of prompts_per_step · G
    rollouts, the old-policy pass (μ > 1) and the reference pass (β > 0); per optimizer step the
    policy's forward+backward over the batch. Rollouts are counted at max_prompt_len +
    max_new_tokens tokens (an upper bound: generation stops at the stop token)."""
    import math

    from kollm.plan import make, part, world_of
    from kollm.train.memory import memory_plan
    from kollm.train.model_setup import plan_model_config
    from kollm.train.schedules import plan_phases

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


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kollm grpo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="GRPO config (YAML), e.g. recipes/tiny-grpo.yaml")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value (YAML), e.g. --set data.train=prompts.jsonl (repeatable)")
    from kollm.plan import add_plan_args, emit, world_of

    add_plan_args(p, "print the compute plan (rollouts, reference pass, training) and exit")
    args = p.parse_args(argv)
    if args.dry_run:
        return emit(dry_run(load_grpo_config(args.config, args.set, world=world_of(args)), args), args)

    import os

    from kollm.train.export import export_final
    from kollm.train.model_setup import build_run_model
    from kollm.train.objectives.grpo import GRPOObjective
    from kollm.train.parallel import distributed_run
    from kollm.train.trainer import Trainer

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
        model = build_run_model(tc, info.device)
        trainer_model = model
        objective = GRPOObjective(cfg.grpo.loss_type, cfg.grpo.epsilon, cfg.grpo.epsilon_high, cfg.grpo.beta,
                                  cfg.grpo.max_new_tokens, cfg.grpo.temperature)
        _, source, val = build(cfg, info, model.to(info.device))
        trainer = Trainer(tc, trainer_model, objective, source, info, val_data=val)
        if cfg.grpo.keep_best:
            from kollm.model.hf import DTYPES
            from kollm.train.export import start_generation_config
            from kollm.train.parallel import unwrap

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


__all__ = ["main", "dry_run", "GRPOConfig", "GRPOData", "GRPOSection", "RolloutSource", "ValidationSource", "PromptSet",
           "load_grpo_config", "grpo_config_from_dict", "mean_reward"]
