"""Offline DPO (`kollm dpo CONFIG [--set KEY=VALUE] [--resume]`, the command in kollm.train.dpo_cli) (DNA 1.0: β 0.1, lr 1e-6, 2 epochs)
on TRL-format preference pairs with the one trainer (kollm.train.trainer) and a DPO objective
(kollm.train.objectives.dpo). `kollm dpo --online CONFIG` runs online DPO rounds
(kollm.train.dpo_online); `kollm dpo sample ...` writes k samples per prompt of a policy
(kollm.data.samples); `kollm dpo pairs ...` builds pairs from scored responses (kollm.data.pairs).

The config is a training config (kollm.train.config) with `data.train` / `data.validation`
(preference files) and a `dpo:` section; the single phase is derived from `dpo.epochs` and
`dpo.pairs_per_step`. The reference log-probabilities are computed once by the initial policy —
which *is* the reference — before training (batched, no gradients), stored beside the data as
`PAIRS.ref-<key>.pt`, keyed by a hash of the tokenized rows (rows + tokenizer + template +
max_length) and of the reference weights, and reused; no second model is held during training
(TRL's `precompute_ref_log_probs`). Under torchrun every rank computes its share, the shares are
gathered on every rank and rank 0 writes the file.

`--dry-run` prints the compute plan without data or model (kollm.plan): the reference pass, the
online rounds' sampling and the training steps, in FLOPs, GPU-hours and per-rank memory.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from kollm.data.chat import RowErrors, load_tokenizer
from kollm.data.preferences import PreferenceData, read_pairs, tokenize_pairs
from kollm.jsonrows import count_jsonl_rows
from kollm.plan import make, part, world_of
from kollm.train.config import TrainConfig, config_from_dict
from kollm.train.export import export_final
from kollm.train.memory import memory_plan
from kollm.train.model_setup import plan_model_config
from kollm.train.objectives.dpo import LOSSES, DPOObjective, sequence_logps
from kollm.train.parallel import check_parallel
from kollm.train.spec import StageSpec
from kollm.train.trainer import Trainer


@dataclass
class OnlineSection:
    """Online DPO (DNA 1.0 §4): per round, k samples per prompt from the current policy, scored,
    best vs worst trained; the reference stays the round-0 policy."""

    prompts: str = ""  # JSONL/Parquet: `prompt` (string or messages), optional `id`, `answer` (for a verifier)
    rounds: int = 2
    k: int = 4  # samples per prompt (>= 2)
    prompts_per_round: int = 0  # 0: every prompt each round
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    gen_batch: int = 32  # prompts×samples per generation batch
    reward: str | None = None  # dotted path `pkg.module:function` (prompt, response, row) -> float
    judge: dict = field(default_factory=dict)  # {endpoint, model, api_key_env, concurrency, rubric: fastchat | dna}
    # a scalar reward model (DNA §4.4): {path} in process or {endpoint, model, tokenizer}; batch_size, max_length
    reward_model: dict = field(default_factory=dict)
    max_length_ratio: float | None = None  # drop pairs whose lengths differ by more than this ratio
    planned_prompts: int = 0  # dry run with prompts_per_round 0 and no prompts file: prompts assumed


@dataclass
class DPOSection:
    beta: float = 0.1
    loss: str = "sigmoid"  # sigmoid | ipo | sigmoid_norm
    rpo_alpha: float | None = None  # RPO: + α × NLL of the chosen completions (TRL's rpo_alpha); null: off
    epochs: float = 1.0
    pairs_per_step: int = 32  # global batch, in pairs
    micro_batch: int = 8  # pairs per forward per rank
    max_length: int = 1024  # tokens of prompt + completion (cut keeping the start)
    ref_batch: int = 16  # pairs per reference forward
    reference: str = "precomputed"  # precomputed | model (keep the reference model in memory; benchmark)
    val_batch: int = 16
    planned_pairs: int = 0  # dry run without data.train: the pairs assumed (e.g. DNA's ~80K)
    online: OnlineSection = field(default_factory=OnlineSection)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"dpo.loss: one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.reference not in ("precomputed", "model"):
            raise ValueError(f"dpo.reference: precomputed | model, got {self.reference!r}")
        for k in ("pairs_per_step", "micro_batch", "max_length", "ref_batch", "val_batch"):
            if getattr(self, k) < 1:
                raise ValueError(f"dpo.{k} must be positive")
        on = self.online
        # epochs 0 would still train one step, beta 0 makes every loss ln 2 (no gradient), top_p 0 or
        # temperature 0 fail only at the first generation
        for key, value, ok, want in [
                ("dpo.epochs", self.epochs, math.isfinite(self.epochs) and self.epochs > 0,
                 "a finite number > 0 (a fraction trains part of an epoch)"),
                ("dpo.beta", self.beta, math.isfinite(self.beta) and self.beta > 0, "a finite number > 0"),
                ("dpo.rpo_alpha", self.rpo_alpha,
                 self.rpo_alpha is None or math.isfinite(self.rpo_alpha) and self.rpo_alpha >= 0,
                 "null (off) or a finite number >= 0"),
                ("dpo.online.k", on.k, on.k >= 2, ">= 2 (best vs worst)"),
                ("dpo.online.rounds", on.rounds, on.rounds >= 1, "positive"),
                ("dpo.online.prompts_per_round", on.prompts_per_round, on.prompts_per_round >= 0,
                 ">= 0 (0: every prompt)"),
                ("dpo.online.max_new_tokens", on.max_new_tokens, on.max_new_tokens >= 1, "positive"),
                ("dpo.online.gen_batch", on.gen_batch, on.gen_batch >= 1, "positive"),
                ("dpo.online.temperature", on.temperature, math.isfinite(on.temperature) and on.temperature > 0,
                 "a finite number > 0"),
                ("dpo.online.top_p", on.top_p, math.isfinite(on.top_p) and 0 < on.top_p <= 1, "in (0, 1]"),
                ("dpo.online.max_length_ratio", on.max_length_ratio,
                 on.max_length_ratio is None or math.isfinite(on.max_length_ratio) and on.max_length_ratio >= 1,
                 ">= 1 (longer / shorter)")]:
            if not ok:
                raise ValueError(f"{key} must be {want}, got {value!r}")


def dpo_config(raw: dict, own: dict, world: int = 1) -> tuple[dict, DPOSection, str, str | None]:
    """The spec's assemble step: the trainer's sections stay raw (the phase is derived from the pair
    count: train_config), with `dpo:` built (strictly checked), `data.train` / `data.validation`."""
    data = raw.setdefault("data", {})
    train, val = data.get("train") or "", data.get("validation") or None
    data.setdefault("mask_policy", "causal")
    if "phases" in raw:
        raise KeyError("phases: set from dpo.epochs and dpo.pairs_per_step, remove it")
    # the trainer's sections checked now, as every stage's (the phase's steps follow from the pairs)
    config_from_dict(_with_phase(raw, own["dpo"], 1))
    return raw, own["dpo"], train, val


def load_dpo_config(path: str | Path, overrides: list[str] = ()) -> tuple[dict, DPOSection, str, str | None]:
    """The raw config with `dpo:` split off (strictly checked), and `data.train` / `data.validation`."""
    return SPEC.load(path, overrides)


def train_config(raw: dict, dpo: DPOSection, n_pairs: int, where: str = "config") -> TrainConfig:
    """The trainer's config: one phase of ceil(epochs·pairs / pairs_per_step) steps whose batch is
    `pairs_per_step` pairs (the trainer counts sequences of seq_len tokens: one pair = one)."""
    try:
        return config_from_dict(_with_phase(raw, dpo, n_pairs))
    except (KeyError, ValueError) as e:
        raise type(e)(f"{where}: {e.args[0]}") from None


def _with_phase(raw: dict, dpo: DPOSection, n_pairs: int) -> dict:
    raw = copy.deepcopy(raw)
    steps = max(1, math.ceil(dpo.epochs * n_pairs / dpo.pairs_per_step))
    raw["phases"] = [{"name": "dpo", "steps": steps,
                      "data": {"seq_len": dpo.max_length, "batch_size": dpo.micro_batch}}]
    raw.setdefault("batch", {})["tokens"] = dpo.pairs_per_step * dpo.max_length
    raw.setdefault("schedule", {"kind": "cosine", "warmup_steps": math.ceil(0.1 * steps), "final_lr_ratio": 0.1})
    return raw


# -- dry run ---------------------------------------------------------------------------------------
def _dpo_parts(dpo: DPOSection, n_pairs: int, f: float, label: str = "") -> list[dict]:
    """Reference forward once over every pair (chosen and rejected, ≤ max_length tokens each),
    then epochs·pairs/pairs_per_step steps of policy forward+backward on both sequences."""
    L = dpo.max_length
    steps = max(1, math.ceil(dpo.epochs * n_pairs / dpo.pairs_per_step))
    return [part(f"{label}reference forward", "forward", n_pairs * 2 * L, f, L),
            dict(part(f"{label}policy fwd+bwd", "train", steps * dpo.pairs_per_step * 2 * L, f, L), steps=steps)]


def dry_run(raw: dict, dpo: DPOSection, data_train: str, args, online: bool, where: str = "config") -> dict:
    """The kollm.plan dict of an offline or online DPO run, from the config alone when the data are
    not there (dpo.planned_pairs, dpo.online.prompts_per_round). Token counts are upper bounds:
    every sequence at max_length (real pairs are shorter; batches pad to the longest)."""
    notes = []
    if online:
        on = dpo.online
        prompts = on.prompts_per_round or count_jsonl_rows(on.prompts) or on.planned_prompts
        if not prompts:
            raise ValueError(f"{where}: dry run: set dpo.online.prompts_per_round (or planned_prompts): the prompts "
                             f"file {on.prompts or '(unset)'} is not there to count")
        n_pairs = prompts  # best vs worst per prompt: at most one pair each (ties and length drops remove some)
    else:
        counted = count_jsonl_rows(data_train)
        n_pairs = counted or dpo.planned_pairs
        if not n_pairs:
            raise ValueError(f"{where}: dry run: data.train {data_train or '(unset)'} is not there to count: set "
                             "dpo.planned_pairs")
        notes.append(f"{n_pairs:,} pairs ({'counted in ' + data_train if counted else 'dpo.planned_pairs'})")
    cfg = train_config(raw, dpo, n_pairs, where)
    mc, more = plan_model_config(cfg)
    notes += more
    L, f = dpo.max_length, mc.flops_per_token(dpo.max_length)
    if online:
        parts = []
        for r in range(on.rounds):
            parts.append(part(f"round {r} sampling ({prompts:,}×{on.k})", "generate", prompts * on.k * L, f, L))
            parts += _dpo_parts(dpo, n_pairs, f, f"round {r} ")
        notes.append(f"{on.rounds} rounds × {prompts:,} prompts × k={on.k} samples ≤ {L} tokens (max_length); "
                     f"{on.rounds * prompts * on.k:,} judge/reward requests (external, not in the GPU-hours)")
        requests = on.rounds * prompts * on.k
    else:
        parts, requests = _dpo_parts(dpo, n_pairs, f), None
    notes.append(f"tokens are upper bounds: chosen and rejected at max_length {L} each")
    precision = cfg.parallel.mixed_precision or "bf16"
    mem = memory_plan(mc, cfg.parallel.mode, world_of(args), 2 * dpo.micro_batch, L, precision,
                      cfg.parallel.activation_checkpointing, cfg.parallel.checkpoint_every)
    memory = mem.total(cfg.parallel.activation_checkpointing)
    if dpo.reference == "model":
        memory += 4 * mc.num_params()  # a frozen fp32 copy held through training
    return make("dpo --online" if online else "dpo", args, parts, memory=memory, notes=notes,
                params=mc.num_params(), pairs=n_pairs, requests=requests)


# -- reference log-probabilities -------------------------------------------------------------------
def model_fingerprint(init_from: str | None, model: torch.nn.Module) -> str:
    """The reference weights: a hash of the checkpoint's files, or of the tensors of a fresh model."""
    h = hashlib.sha256()
    files = sorted(Path(init_from).glob("*.safetensors")) + [Path(init_from) / "config.json"] if init_from else []
    if files:
        for f in files:
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 24):
                    h.update(chunk)
    else:
        for name, t in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def data_fingerprint(pairs) -> str:
    h = hashlib.sha256()
    for p in pairs:
        for ids in (p.prompt, p.chosen, p.rejected):
            h.update(len(ids).to_bytes(4, "little"))
            h.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


def cache_path(data_path: str, key: str, fallback_dir: Path) -> Path:
    """Beside the data when its directory is writable, else in the run directory."""
    p = Path(data_path)
    name = f"{p.name}.ref-{key[:16]}.pt"
    if os.access(p.parent, os.W_OK):
        return p.parent / name
    return fallback_dir / "ref_logps" / name


@torch.no_grad()
def compute_ref_logps(model: torch.nn.Module, data, batch_size: int, info, autocast: bool) -> torch.Tensor:
    """(N, 2) reference log π(y_w|x), log π(y_l|x) for every pair of `data` (a PreferenceData).
    Each rank takes every world-th pair; all ranks run the same number of forwards (FSDP needs
    them in step), then the shares are gathered on every rank."""
    n = len(data)
    mine = list(range(info.rank, n, info.world))
    n_batches = math.ceil(math.ceil(n / info.world) / batch_size)
    was_training = model.training
    model.eval()
    values: list[tuple[int, float, float]] = []
    for b in range(n_batches):
        idx = mine[b * batch_size:(b + 1) * batch_size] or [0]  # a rank with nothing left runs a dummy
        batch = {k: v.to(info.device) for k, v in data.batch_of(idx).items() if k != "ref_logps"}
        with torch.autocast(info.device.type, torch.bfloat16, enabled=autocast):
            lp = sequence_logps(model, batch).float().cpu()
        w, lo = lp.chunk(2)
        if mine[b * batch_size:(b + 1) * batch_size]:
            values += [(i, float(a), float(c)) for i, a, c in zip(idx, w, lo)]
    model.train(was_training)
    if info.distributed:
        gathered: list = [None] * info.world
        dist.all_gather_object(gathered, values)
        values = [v for part in gathered for v in part]
    out = torch.empty(n, 2, dtype=torch.float32)
    for i, a, c in values:
        out[i, 0], out[i, 1] = a, c
    return out


def reference_logps(model: torch.nn.Module, data, data_path: str, model_key: str, batch_size: int, info,
                    autocast: bool, fallback_dir: Path, stored_only: bool = False) -> tuple[torch.Tensor, Path, bool]:
    """Load the stored reference log-probs of `data`, or compute and store them. Returns the
    (N, 2) tensor, the file and whether it was reused. `stored_only`: `model` is not the
    reference (an online round > 0), so a missing file is an error."""
    key = hashlib.sha256(f"{data_fingerprint(data.pairs)}|{model_key}|{data.max_length}|bf16={autocast}"
                         .encode()).hexdigest()
    path = cache_path(data_path, key, fallback_dir)
    if path.is_file():
        stored = torch.load(path, weights_only=True)
        if stored.get("key") == key and stored["logps"].shape == (len(data), 2):
            return stored["logps"], path, True
    if stored_only:
        raise FileNotFoundError(f"{path}: reference log-probs missing (the model in memory is not the reference)")
    logps = compute_ref_logps(model, data, batch_size, info, autocast)
    if info.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        torch.save({"key": key, "logps": logps, "pairs": len(data)}, tmp)
        os.replace(tmp, path)  # atomic: a reader sees the whole file or none
    if info.distributed:
        dist.barrier()
    return logps, path, False


# -- building blocks shared with online DPO -----------------------------------------------------------
def load_preference_data(path: str, tokenizer, dpo: DPOSection, info, seed: int, shuffle: bool = True):
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such preference file")
    errors = RowErrors()
    pairs = tokenize_pairs(tokenizer, read_pairs(path, errors), dpo.max_length, errors)
    if info.is_main and errors.total:
        print(f"kollm dpo: {path}: {errors.summary()}", file=sys.stderr)
    if not pairs:
        raise ValueError(f"{path}: no usable preference pairs")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    data = PreferenceData(pairs, dpo.max_length, pad or 0, seed=seed, rank=info.rank, world=info.world,
                          shuffle=shuffle)
    data.row_errors = errors  # the trainer reports them (bad_rows.json, end of the run)
    return data


def train_dpo(raw: dict, dpo: DPOSection, data_train: str, data_val: str | None, info, resume: bool,
              run_dir: str | Path | None = None, init_from: str | None = None, reference_key: str | None = None,
              where: str = "config"):
    """One DPO training run with the one trainer; returns the trainer. `init_from` overrides the
    config's model (online rounds continue from the last round); `reference_key` names the
    reference weights when they are not the initial policy's (online rounds > 0 pass the
    round-0 key and precomputed reference log-probs beside their pairs)."""
    raw = copy.deepcopy(raw)
    if init_from:
        raw.setdefault("model", {})["init_from"] = str(init_from)
    model_sec = raw.get("model", {})
    if model_sec.get("init_from") and not model_sec.get("tokenizer"):
        model_sec["tokenizer"] = model_sec["init_from"]  # the export carries the tokenizer
    tok_dir = model_sec.get("tokenizer") or model_sec.get("init_from")
    if not tok_dir:
        raise ValueError(f"{where}: model.init_from (or model.tokenizer) is required for DPO")
    tokenizer = load_tokenizer(tok_dir)
    if not data_train:
        raise ValueError(f"{where}: data.train is required (a preference file)")
    train = SPEC.data(data_train, tokenizer, dpo, info, seed=raw.get("seed", 0))
    val = SPEC.data(data_val, tokenizer, dpo, info, seed=0, shuffle=False) if data_val else None
    cfg = train_config(raw, dpo, len(train), where)
    check_parallel(cfg.parallel, info.world)
    model = SPEC.model(cfg, info.device)
    reference = None
    if dpo.reference == "model":  # the comparison point: a frozen copy held through training
        reference = copy.deepcopy(model).to(info.device).eval().requires_grad_(False)
    objective = SPEC.objective(dpo, reference)
    trainer = Trainer(cfg, model, objective, train, info, run_dir=run_dir,
                      val_data=_Validation(val, dpo.val_batch) if val is not None else None)
    if reference is None:
        key = reference_key or model_fingerprint(cfg.model.init_from, model)
        for d, p in ((train, data_train), (val, data_val)):
            if d is not None:
                d.ref, path, reused = reference_logps(trainer.model, d, p, key, dpo.ref_batch, info,
                                                      trainer.autocast, trainer.run_dir,
                                                      stored_only=reference_key is not None)
                if info.is_main:
                    print(f"kollm dpo: reference log-probs {'reused from' if reused else 'stored in'} {path}",
                          file=sys.stderr)
    trainer.fit(resume=resume)
    trainer.export = export_final(trainer, cfg)
    return trainer


class _Validation:
    """Held-out pairs as the trainer's val_data: fixed batches of `val_batch` pairs."""

    def __init__(self, data, batch_size: int):
        self.data, self.batch_size = data, batch_size

    def batches(self):
        return self.data.batches(self.batch_size)


def dpo_objective(dpo: DPOSection, reference: torch.nn.Module | None = None) -> DPOObjective:
    return DPOObjective(dpo.beta, dpo.loss, reference, dpo.rpo_alpha)


SPEC = StageSpec("dpo", config=dpo_config, sections={"dpo": DPOSection}, data=load_preference_data,
                 objective=dpo_objective)


__all__ = ["dry_run", "DPOSection", "OnlineSection", "load_dpo_config", "dpo_config", "SPEC", "train_config", "train_dpo",
           "reference_logps", "compute_ref_logps", "model_fingerprint", "load_preference_data"]
