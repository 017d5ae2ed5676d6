"""The one training loop (nanoGPT / torchtitan shape). A stage is an *objective* (how a batch
becomes a loss) plus a *data source* (anything with `next_batch(batch_size)`, `set_phase(...)`,
`state_dict()`, `load_state_dict()`); pretraining, SFT, DPO, distillation and GRPO differ only
there.

Per optimizer step: the phase for this step is applied (data mixture and length, weight decay,
MTP α, RoPE base, Trillion §3.2/§3.7), the micro-batches of the step are drawn (batch-size ramp:
kollm.train.schedules), each loss is weighted by its share of the step's target tokens across all
ranks (per loss term) so that any split into ranks × micro-batches gives the gradient of the same
global token mean, gradients are reduced once (on the last micro-batch), clipped, and AdamW steps at the
scheduled LR. A NaN/inf loss or gradient norm stops the run before the update, naming the step and
the last good checkpoint. Metrics go to `metrics.jsonl` (rank 0).
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from torch import nn

from kollm.model.masks import ISOLATES_DOCUMENTS
from kollm.train import checkpoint, parallel, schedules
from kollm.train.config import PhaseSection, TrainConfig
from kollm.train.flops import default_peak_flops, mfu
from kollm.train.objectives.lm import IGNORE, lm_loss, shifted_targets
from kollm.train.parallel import DistInfo
from kollm.train.schedules import decay_start_step, lr_at, micro_batches, phase_at, phase_data, plan_phases

FAULT_ENV = "KOLLM_FAULT_AT_STEP"  # tests: hard-exit (os._exit) right after this step, as a crash would


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient norm; the message names the step and the last good checkpoint."""


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # this micro-batch's share of the step's global loss; what backward sees
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # detached shares, summed for logging


class Objective(Protocol):
    def targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Target counts of each loss term in `batch` (1-D float); the trainer sums them over the
        step's micro-batches and ranks and hands the totals back to `__call__`."""
        ...

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor], totals: torch.Tensor) -> ObjectiveOutput: ...
    def on_phase(self, phase: PhaseSection) -> None: ...


class DataSource(Protocol):
    def next_batch(self, batch_size: int | None = None) -> dict[str, torch.Tensor]: ...
    def set_phase(self, phase) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class LMObjective:
    """Pretraining: next-token loss + α·MTP loss (kollm.train.objectives.lm) under a mask policy.

    Each term is a token mean over the whole step (all micro-batches, all ranks), so the result
    does not depend on how the step is split; NTP and MTP have different target counts (MTP
    targets never cross an isolated document), hence one total per term.
    """

    def __init__(self, mask_policy: str = "causal", restart_positions: bool = False, mtp_alpha: float = 0.0):
        self.mask_policy, self.restart_positions, self.mtp_alpha = mask_policy, restart_positions, mtp_alpha

    def targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels, docs = batch["labels"], batch.get("doc_ids")
        ntp = (labels[:, 1:] != IGNORE).sum()
        mtp = (shifted_targets(labels, 2, docs, ISOLATES_DOCUMENTS[self.mask_policy]) != IGNORE).sum()
        return torch.stack([ntp, mtp]).float()

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor], totals: torch.Tensor) -> ObjectiveOutput:
        out = model(batch["input_ids"], doc_ids=batch.get("doc_ids"), lang_ids=batch.get("lang_ids"),
                    mask_policy=self.mask_policy, restart_positions=self.restart_positions)
        n = self.targets(batch)
        w_ntp, w_mtp = (n / totals.clamp(min=1)).tolist()
        if w_ntp == 0:  # a padding micro-batch (more ranks than sequences): no share, same graph and keys
            zero = 0.0 * out.logits.sum() + (0.0 * out.mtp_logits.sum() if out.mtp_logits is not None else 0.0)
            return ObjectiveOutput(zero, {"ntp_loss": zero.detach()} | (
                {"mtp_loss": zero.detach()} if out.mtp_logits is not None and self.mtp_alpha else {}))
        # lm_loss gives ntp + α'·mtp as micro-batch means; α' rescales the MTP term to its own weight.
        alpha = self.mtp_alpha * w_mtp / w_ntp if w_ntp > 0 else 0.0
        r = lm_loss(out, batch["labels"], batch.get("doc_ids"), self.mask_policy, alpha)
        loss = r.loss * w_ntp
        if out.mtp_logits is not None and r.mtp is None:
            # α = 0 (or no MTP target here): keep the MTP block in the graph with a zero gradient,
            # or DDP would wait forever for gradients of parameters that got none.
            loss = loss + 0.0 * out.mtp_logits.sum()
        metrics = {"ntp_loss": r.ntp * w_ntp} | ({"mtp_loss": r.mtp * w_mtp} if r.mtp is not None else {})
        return ObjectiveOutput(loss, metrics)

    def on_phase(self, phase: PhaseSection) -> None:
        self.mtp_alpha = phase.mtp_alpha


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Trainer:
    def __init__(self, cfg: TrainConfig, model: nn.Module, objective: Objective, data: DataSource,
                 info: DistInfo | None = None, run_dir: str | Path | None = None):
        self.cfg, self.objective, self.data = cfg, objective, data
        self.info = info or DistInfo()
        self.run_dir = Path(run_dir or cfg.output_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.model_config = model.config
        self._base_theta = model.config.rope_theta  # phases without rope_theta run at the model's own
        self.plans = plan_phases(cfg, self.info.world)
        self.schedule_steps = sum(p.steps for p, ph in zip(self.plans, cfg.phases) if ph.lr is None)
        self.decay_start = decay_start_step(cfg, self.plans)
        self.total_steps = sum(p.steps for p in self.plans)
        on_meta = any(p.is_meta for p in model.parameters())
        if not on_meta:
            model.to(self.info.device)
        self.model = parallel.parallelize(model, cfg.parallel.mode, self.info, cfg.parallel.activation_checkpointing)
        if on_meta:  # built on the meta device: allocate and initialise after sharding
            parallel.materialize(self.model, self.info.device)
        self.optimizer = parallel.build_optimizer(self.model, cfg.parallel.mode, cfg.optimizer)
        self.step = 0  # optimizer steps done
        self.tokens_seen = 0
        self.phase_idx = -1
        self.last_checkpoint: Path | None = None
        self.peak_flops = cfg.logging.peak_flops or default_peak_flops(self.info.device)
        self.autocast = self.info.device.type == "cuda" and cfg.parallel.mode != "fsdp"  # FSDP2 casts itself
        self.history: list[dict] = []
        self._sinks: list = []

    # -- phases --------------------------------------------------------------------------------
    def apply_phase(self, idx: int, data: bool = True) -> None:
        phase = self.cfg.phases[idx]
        if data:
            self.data.set_phase(phase_data(phase))
        wd = self.cfg.optimizer.weight_decay if phase.weight_decay is None else phase.weight_decay
        parallel.set_weight_decay(self.optimizer, wd)
        self.objective.on_phase(phase)
        self.model_config.rope_theta = phase.rope_theta or self._base_theta
        self.model_config.max_seq_len = max(self.model_config.max_seq_len, self.plans[idx].seq_len)
        self.phase_idx = idx

    def lr(self, step: int) -> float:
        phase = self.cfg.phases[phase_at(self.plans, step)]
        if phase.lr is not None:
            return phase.lr
        return lr_at(step, self.schedule_steps, self.cfg.optimizer.lr, self.cfg.schedule, self.decay_start)

    # -- checkpoints ---------------------------------------------------------------------------
    def save(self) -> Path:
        state = {"tokens_seen": self.tokens_seen, "phase": self.phase_idx, "world": self.info.world,
                 "model_config": self.model_config.to_dict(),  # as trained now: export uses it
                 # absolute: `kollm export` may run from another directory
                 "tokenizer": str(Path(self.cfg.model.tokenizer).resolve()) if self.cfg.model.tokenizer else None}
        self.last_checkpoint = checkpoint.save(self.ckpt_root, self.step, self.model, self.optimizer, state,
                                               {"data": self.data.state_dict()}, keep=self.cfg.checkpoint.keep)
        return self.last_checkpoint

    def resume(self, path: str | Path | None = None) -> bool:
        """Restore from `path` or the latest checkpoint of this run; False if there is none."""
        path = Path(path) if path else checkpoint.latest(self.ckpt_root)
        if path is None:
            return False
        written_by = checkpoint.read_trainer_state(path).get("world", 1)
        if written_by != self.info.world:
            raise ValueError(f"{path}: written by {written_by} ranks, resuming on {self.info.world}; "
                             "the data streams are per rank, resume with the same world size")
        state, rank_state = checkpoint.load(path, self.model, self.optimizer)
        self.data.load_state_dict(rank_state["data"])
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.last_checkpoint = path
        self.phase_idx = state["phase"]
        return True

    # -- the step ------------------------------------------------------------------------------
    def train_step(self) -> dict:
        mode, info = self.cfg.parallel.mode, self.info
        seq_len = self.plans[self.phase_idx].seq_len
        micro_bs = phase_data(self.cfg.phases[self.phase_idx]).batch_size
        sizes = micro_batches(self.cfg.batch, self.tokens_seen, seq_len, micro_bs, info.world, info.rank)
        batches = [{k: v.to(info.device, non_blocking=True) for k, v in self.data.next_batch(b).items()}
                   for b in sizes]
        counts = [self.objective.targets(b).to(info.device) for b in batches]
        totals = _all_reduce_sum(torch.stack(counts).sum(0))
        lr = self.lr(self.step)
        parallel.set_lr(self.optimizer, lr)
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(batches):
            with parallel.grad_sync(self.model, mode, sync=i == len(batches) - 1), \
                    torch.autocast(info.device.type, torch.bfloat16, enabled=self.autocast):
                out = self.objective(self.model, batch, totals)
                # DDP/FSDP average gradients over ranks; the shares already sum to the global mean.
                (out.loss * info.world).backward()
            for k, v in {"loss": out.loss.detach(), **out.metrics}.items():
                sums[k] = sums.get(k, 0.0) + v.float()
        keys = sorted(sums)
        reduced = _all_reduce_sum(torch.stack([sums[k] for k in keys]))
        metrics = {k: float(v) for k, v in zip(keys, reduced)}
        grad_norm = float(parallel.clip_grad_norm(self.model, self.cfg.optimizer.grad_clip))
        if not (math.isfinite(metrics["loss"]) and math.isfinite(grad_norm)):
            what = "loss" if not math.isfinite(metrics["loss"]) else "gradient norm"
            value = metrics["loss"] if what == "loss" else grad_norm
            last = self.last_checkpoint or "none (no checkpoint was written)"
            raise TrainingDiverged(f"non-finite {what} ({value}) at step {self.step + 1}; "
                                   f"last good checkpoint: {last}")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        step_tokens = schedules.global_sequences(self.cfg.batch, self.tokens_seen, seq_len) * seq_len
        self.step += 1
        self.tokens_seen += step_tokens
        return metrics | {"grad_norm": grad_norm, "lr": lr, "step_tokens": step_tokens, "micro_batches": len(sizes)}

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> list[dict]:
        if resume and self.resume():
            self.apply_phase(self.phase_idx, data=False)  # the loader restored its own phase
        elif checkpoint.latest(self.ckpt_root) is not None:
            raise ValueError(f"{self.ckpt_root} holds checkpoints of an earlier run: pass --resume to continue "
                             "it, or choose a new output_dir")
        self._open_sinks()
        bar = self._progress()
        every = self.cfg.checkpoint.every
        fault = int(os.environ.get(FAULT_ENV, "0"))
        try:
            while self.step < self.total_steps:
                idx = phase_at(self.plans, self.step)
                if idx != self.phase_idx:
                    self.apply_phase(idx)
                t0 = time.perf_counter()
                m = self.train_step()
                dt = time.perf_counter() - t0
                self._log(m, dt)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}", phase=self.cfg.phases[idx].name)
                if every and self.step % every == 0 and self.step < self.total_steps:
                    self.save()
                if fault and self.step == fault:
                    os._exit(17)  # a crash: no cleanup, no final checkpoint
            self.save()
        finally:
            if bar is not None:
                bar.close()
            for s in self._sinks:
                s.close()
        return self.history

    # -- logging -------------------------------------------------------------------------------
    def _progress(self):
        if not (self.cfg.logging.progress and self.info.is_main):
            return None
        from tqdm import tqdm

        # Redirected to a file (a cluster job's log), redraw every 30 s, not every step.
        return tqdm(total=self.total_steps, initial=self.step, desc=self.cfg.name, dynamic_ncols=True,
                    mininterval=0.1 if sys.stderr.isatty() else 30.0)

    def _open_sinks(self) -> None:
        if not self.info.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "metrics.jsonl"
        if path.exists():  # resumed: drop steps logged after the checkpoint, they are trained again
            def kept(line: str) -> bool:
                try:
                    return json.loads(line).get("step", 0) <= self.step
                except ValueError:  # a line cut short by the crash
                    return False

            rows = path.read_text(encoding="utf-8").splitlines(keepends=True)
            path.write_text("".join(r for r in rows if kept(r)), encoding="utf-8")
        self._jsonl = open(path, "a", encoding="utf-8")
        self._sinks = [self._jsonl]
        log = self.cfg.logging
        if log.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("logging.tensorboard: the tensorboard package is not installed") from None
            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            self._sinks.append(self._tb)
        if log.wandb_project:
            try:
                import wandb
            except ImportError:
                raise ValueError("logging.wandb_project: the wandb package is not installed") from None
            self._wandb = wandb.init(project=log.wandb_project, name=self.cfg.name, dir=str(self.run_dir))
            self._sinks.append(type("Finish", (), {"close": lambda _: self._wandb.finish()})())

    def _log(self, m: dict, dt: float) -> None:
        tok_s = m["step_tokens"] / dt
        seq_len = self.plans[self.phase_idx].seq_len
        rec = {"step": self.step, "phase": self.cfg.phases[self.phase_idx].name, "tokens": self.tokens_seen,
               **{k: v for k, v in m.items() if k != "step_tokens"}, "tokens_per_s": tok_s,
               "mfu": mfu(tok_s, self.model_config.flops_per_token(seq_len), self.peak_flops, self.info.world)
               if self.peak_flops else None,
               "peak_mem_mb": peak_memory_mb(self.info.device), "time": time.time()}
        self.history.append(rec)
        if not self.info.is_main or self.step % self.cfg.logging.every:
            return
        self._jsonl.write(json.dumps(rec) + "\n")
        self._jsonl.flush()
        if getattr(self, "_tb", None) is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, self.step)
        if getattr(self, "_wandb", None) is not None:
            self._wandb.log(rec, step=self.step)


__all__ = ["Trainer", "LMObjective", "ObjectiveOutput", "Objective", "DataSource", "TrainingDiverged", "FAULT_ENV"]
