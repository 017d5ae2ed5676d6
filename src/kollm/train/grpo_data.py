"""`kollm grpo`'s data: prompt rows tokenised once (PromptSet), the trainer's data source
(RolloutSource: G completions per prompt from the current policy, scored by kollm.rl.rewards,
group-normalised advantages, DeepSeekMath §4.1), the held-out source (ValidationSource: greedy
completions' mean reward), grpo.keep_best's export (BestExport) and `build`, which assembles them
for a run (kollm.train.grpo)."""

from __future__ import annotations

import base64
import copy
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from kollm.data.chat import (
    BadRow,
    RowErrors,
    check_messages,
    data_files,
    encode_prompt,
    iter_rows,
    load_tokenizer,
    stop_token_ids,
)
from kollm.model.generate import GenerationConfig, generate
from kollm.model.hf import DTYPES, save_hf
from kollm.rl.rewards import Rewards
from kollm.rl.rollout import LocalRollout, ServerRollout, WeightSync, pad_rollouts
from kollm.train.export import link_latest
from kollm.train.grpo_config import GRPOConfig, GRPOData
from kollm.train.objectives.grpo import group_advantages, token_logps_head
from kollm.train.parallel import unwrap, uses_autocast


# -- prompts -------------------------------------------------------------------------------------
class PromptSet:
    """Prompt rows tokenised once: `ids[i]` the prompt tokens, `rows[i]` the row the rewards see.
    Malformed rows are counted by reason with file:line (kollm.data.chat.RowErrors) and skipped."""

    def __init__(self, spec: str | Path, tokenizer, data: GRPOData, needs: set[str], limit: int | None = None):
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


# -- a run's sources ---------------------------------------------------------------------------
def build(cfg: GRPOConfig, info, model):
    """Tokenizer, prompts, rewards, rollout engine, data and validation sources for a run."""
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


__all__ = ["PromptSet", "reward_fields", "RolloutSource", "BestExport", "mean_reward", "ValidationSource", "build"]
