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
import signal
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from kollm.data import IGNORE
from kollm.train import checkpoint, parallel, schedules
from kollm.train.config import TrainConfig
from kollm.train.flops import default_peak_flops, mfu
from kollm.train.objectives.base import Objective, ObjectiveOutput
from kollm.train.parallel import DistInfo
from kollm.train.schedules import decay_start_step, lr_at, micro_batches, phase_at, plan_phases

FAULT_ENV = "KOLLM_FAULT_AT_STEP"  # tests: hard-exit (os._exit) right after this step, as a crash would


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient norm; the message names the step and the last good checkpoint."""


class TrainingInterrupted(SystemExit):
    """SIGINT/SIGTERM: a checkpoint was written at the step boundary and the message printed. A
    SystemExit (status 128 + signal, the shell's convention), so every stage exits cleanly through
    its `finally` blocks without a traceback."""

    def __init__(self, sig: signal.Signals, checkpoint: Path):
        super().__init__(128 + int(sig))
        self.signal, self.checkpoint = sig, checkpoint


class DataSource(Protocol):
    def next_batch(self, batch_size: int | None = None) -> dict[str, torch.Tensor]: ...
    def set_phase(self, phase) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class ValidationSource(Protocol):
    """Held-out data: the same finite list of batches every call (each rank its own share, the same
    number of batches on every rank)."""

    def batches(self) -> Iterable[dict[str, torch.Tensor]]: ...


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """The batch's non-pad tokens (what `tokens_per_s` counts, as the benches do): packed rows mark
    pads with doc id -1; right-padded rows (DPO pairs, GRPO rollouts, distillation, unpacked SFT)
    end at their last trained token."""
    if "doc_ids" in batch:
        return int((batch["doc_ids"] >= 0).sum())
    trained = batch["completion_mask"] != 0 if "completion_mask" in batch else batch["labels"] != IGNORE
    ends = (trained * torch.arange(1, trained.shape[1] + 1, device=trained.device)).amax(1)
    return int(ends.sum())


def _replace_atomically(path: Path, text: str) -> None:
    """Write a temporary file beside `path`, then rename it over: a kill leaves the old or the new."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Trainer:
    def __init__(self, cfg: TrainConfig, model: nn.Module, objective: Objective, data: DataSource,
                 info: DistInfo | None = None, run_dir: str | Path | None = None,
                 val_data: ValidationSource | None = None):
        self.cfg, self.objective, self.data, self.val_data = cfg, objective, data, val_data
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
        self.precision = parallel.resolve_precision(cfg.parallel.mixed_precision, self.info.device)
        self.compile = parallel.resolve_compile(cfg.parallel.compile, self.info.device)
        if self.info.is_main:  # the choice made for an unset key, said once at the start of the log
            print(f"{cfg.name}: {self.info.device.type}, compile {'on' if self.compile else 'off'}"
                  f"{' (parallel.compile unset)' if cfg.parallel.compile is None else ''}, {self.precision}",
                  file=sys.stderr, flush=True)
        self.model = parallel.parallelize(model, cfg.parallel.mode, self.info, cfg.parallel.activation_checkpointing,
                                          self.precision, self.compile, cfg.parallel.checkpoint_every,
                                          cfg.parallel.reduce_dtype)
        if on_meta:  # built on the meta device: allocate and initialise after sharding
            parallel.materialize(self.model, self.info.device)
        self.optimizer = parallel.build_optimizer(self.model, cfg.parallel.mode, cfg.optimizer)
        self.step = 0  # optimizer steps done
        self.tokens_seen = 0
        self.phase_idx = -1
        self.last_checkpoint: Path | None = None
        self.peak_flops = cfg.logging.peak_flops or default_peak_flops(self.info.device)
        self.autocast = parallel.uses_autocast(cfg.parallel.mixed_precision, cfg.parallel.mode, self.info.device)
        self.history: list[dict] = []
        self._sinks: list = []

    # -- phases --------------------------------------------------------------------------------
    def apply_phase(self, idx: int, data: bool = True) -> None:
        phase = self.cfg.phases[idx]
        if data:
            self.data.set_phase(phase.data)
        wd = self.cfg.optimizer.weight_decay if phase.weight_decay is None else phase.weight_decay
        parallel.set_weight_decay(self.optimizer, wd)
        self.objective.on_phase(phase)
        self.model_config.rope_theta = phase.rope_theta or self._base_theta
        # the longest phase so far, as in an uninterrupted run (generation is capped by it; the export's config)
        self.model_config.max_seq_len = max(self.model_config.max_seq_len, *(p.seq_len for p in self.plans[:idx + 1]))
        self.phase_idx = idx
        self._record_phases()

    def _record_phases(self) -> None:
        """`phases.json` beside metrics.jsonl: each phase's planned steps and sequence length, and the
        language mixture it asks for (when the data source has one) — what `kollm report` compares
        the drawn mixture (`mix_<lang>`) against."""
        if not self.info.is_main:
            return
        start, rows = 0, []
        for ph, plan in zip(self.cfg.phases, self.plans):
            rows.append({"name": ph.name, "start_step": start, "steps": plan.steps, "seq_len": plan.seq_len})
            start += plan.steps
        asked = getattr(self.data, "probs", None)
        if isinstance(asked, dict):
            rows[self.phase_idx]["mixture"] = {k: float(v) for k, v in asked.items()}
        path = self.run_dir / "phases.json"
        try:
            old = {r["name"]: r for r in json.loads(path.read_text())} if path.exists() else {}
        except (ValueError, KeyError, TypeError):
            old = {}
        for r in rows:  # keep mixtures recorded by earlier phases (and before a resume)
            if "mixture" not in r and "mixture" in old.get(r["name"], {}):
                r["mixture"] = old[r["name"]]["mixture"]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        tmp.replace(path)

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
        try:
            self.last_checkpoint = checkpoint.save(self.ckpt_root, self.step, self.model, self.optimizer, state,
                                                   {"data": self.data.state_dict()}, keep=self.cfg.checkpoint.keep)
        except checkpoint.NonFiniteState as e:  # a bad update the loss guard could not see yet
            raise TrainingDiverged(f"{e}; last good checkpoint: {self.last_checkpoint or 'none'}") from None
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
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.last_checkpoint = path
        self.phase_idx = state["phase"]
        # The source as the uninterrupted run had it: set to the checkpoint's phase, then its own
        # state on top, so what a source derives from the phase is restored even where its state
        # leaves it out.
        self.data.set_phase(self.cfg.phases[self.phase_idx].data)
        self.data.load_state_dict(rank_state["data"])
        return True

    # -- the step ------------------------------------------------------------------------------
    def train_step(self) -> dict:
        mode, info = self.cfg.parallel.mode, self.info
        seq_len = self.plans[self.phase_idx].seq_len
        micro_bs = self.cfg.phases[self.phase_idx].data.batch_size
        sizes = micro_batches(self.cfg.batch, self.tokens_seen, seq_len, micro_bs, info.world, info.rank)
        if (on_step := getattr(self.data, "on_step", None)) is not None:  # distillation's fresh-sample share
            on_step(self.step, self.total_steps)
        batches = [{k: v.to(info.device, non_blocking=True) for k, v in self.data.next_batch(b).items()}
                   for b in sizes]
        counts = [self.objective.targets(b).to(info.device) for b in batches]
        real = sum(real_tokens(b) for b in batches)
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
        real = float(_all_reduce_sum(torch.tensor([float(real)], device=info.device)))
        return metrics | {"grad_norm": grad_norm, "lr": lr, "step_tokens": step_tokens, "real_tokens": real,
                          "micro_batches": len(sizes)}

    # -- validation ----------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """The objective on the held-out batches, as global token means over all of them (the same
        reduction as a training step), in eval mode (no dropout, the MTP head idle: `val_loss` is
        the next-token loss). Returns `val_<key>` for every metric; then the objective's and the
        data source's `on_validation` hooks see them (distillation's off-policy schedule)."""
        info = self.info
        batches = [{k: v.to(info.device) for k, v in b.items()} for b in self.val_data.batches()]
        if not batches:
            raise ValueError("validation: the held-out data gave no batch")
        totals = _all_reduce_sum(torch.stack([self.objective.targets(b).to(info.device) for b in batches]).sum(0))
        was_training = self.model.training
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        try:
            for batch in batches:
                with torch.autocast(info.device.type, torch.bfloat16, enabled=self.autocast):
                    out = self.objective(self.model, batch, totals)
                for k, v in {"loss": out.loss, **out.metrics}.items():
                    sums[k] = sums.get(k, 0.0) + v.detach().float()
        finally:
            self.model.train(was_training)
        keys = sorted(sums)
        reduced = _all_reduce_sum(torch.stack([sums[k] for k in keys]))
        metrics = {f"val_{k}": float(v) for k, v in zip(keys, reduced)}
        for hook in (getattr(self.objective, "on_validation", None), getattr(self.data, "on_validation", None)):
            if hook is not None:
                hook(metrics)
        return metrics

    def _validation_due(self) -> bool:
        every = self.cfg.validation.every
        return self.val_data is not None and ((every and self.step % every == 0) or self.step == self.total_steps)

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> list[dict]:
        if resume and self.resume():
            self.apply_phase(self.phase_idx, data=False)  # resume() set the data source's phase
        elif checkpoint.latest(self.ckpt_root) is not None:
            raise ValueError(f"{self.ckpt_root} holds checkpoints of an earlier run: pass --resume to continue "
                             "it, or choose a new output_dir")
        self._open_sinks()
        bar = self._progress()
        every = self.cfg.checkpoint.every
        fault = int(os.environ.get(FAULT_ENV, "0"))
        handlers = self._catch_stop_signals()
        try:
            if self.step == 0 and self.val_data is not None and getattr(self.data, "validate_at_start", False):
                # DistiLLM validates the untrained student: the reference for its off-policy schedule
                self.history.append(rec := {"step": 0, **self.validate(), "time": time.time()})
                if self.info.is_main:
                    self._jsonl.write(json.dumps(rec) + "\n")
            while self.step < self.total_steps:
                idx = phase_at(self.plans, self.step)
                if idx != self.phase_idx:
                    self.apply_phase(idx)
                t0 = time.perf_counter()
                m = self.train_step()
                dt = time.perf_counter() - t0
                if self._validation_due():
                    m |= self.validate()
                self._log(m, dt)
                if bar is not None:
                    bar.update(1)
                    # the next-token loss: NTP + α·MTP would read as a drop when α changes between phases
                    shown = {"loss": f"{m.get('ntp_loss', m['loss']):.4f}", "lr": f"{m['lr']:.2e}",
                             "phase": self.cfg.phases[idx].name}
                    if "val_loss" in m:
                        shown["val"] = f"{m['val_loss']:.4f}"
                    bar.set_postfix(shown)
                if self._stop_requested():
                    self._stop()
                if every and self.step % every == 0 and self.step < self.total_steps:
                    self.save()
                if fault and self.step == fault:
                    os._exit(17)  # a crash: no cleanup, no final checkpoint
            self.save()
            if self.info.is_main and (bad := self._bad_rows()):  # said again at the end, not only at load
                print("\n".join(f"{self.cfg.name}: {split} data: {b['summary']}" for split, b in bad.items())
                      + f" (per file: {self.run_dir / 'bad_rows.json'})", file=sys.stderr)
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
            if bar is not None:
                bar.close()
            for s in self._sinks:
                s.close()
        return self.history

    def _bad_rows(self) -> dict:
        """{"train" | "validation": kollm.jsonrows.RowErrors as a dict + summary} for the data
        sources that read row files and skipped some."""
        out = {}
        for split, src in (("train", self.data), ("validation", self.val_data)):
            errors = getattr(src, "row_errors", None)
            if errors is not None and errors.total:
                out[split] = {**errors.to_dict(), "summary": errors.summary()}
        return out

    # -- stopping on SIGINT / SIGTERM (Ctrl-C; what schedulers send before preemption) --------
    def _catch_stop_signals(self) -> dict:
        """The signal only sets a flag: the step in flight finishes, then `_stop` checkpoints. A
        second signal acts as it normally would (an impatient Ctrl-C still interrupts)."""
        self._stop_signal = 0
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_signal(signum, frame):
            self._stop_signal = signum
            signal.signal(signum, previous[signum])

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        return previous

    def _stop_requested(self) -> int:
        """The signal, agreed by all ranks (one may have got it a step later than another)."""
        flag = self._stop_signal
        if self.info.world > 1 and dist.is_available() and dist.is_initialized():
            t = torch.tensor([flag], device=self.info.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = int(t.item())
        return flag

    def _stop(self) -> None:
        sig = signal.Signals(self._stop_signal or self._stop_requested())
        path = self.save()
        if self.info.is_main:
            print(f"\n{self.cfg.name}: stopped by {sig.name} after step {self.step}/{self.total_steps}; checkpoint "
                  f"{path}. To continue, run the same command with --resume.", file=sys.stderr, flush=True)
        raise TrainingInterrupted(sig, path)

    # -- logging -------------------------------------------------------------------------------
    def _progress(self):
        if not (self.cfg.logging.progress and self.info.is_main):
            return None
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
            _replace_atomically(path, "".join(r for r in rows if kept(r)))
        self._jsonl = open(path, "a", encoding="utf-8")
        self._sinks = [self._jsonl]
        if bad := self._bad_rows():  # every stage's skipped input rows, per file and reason
            _replace_atomically(self.run_dir / "bad_rows.json", json.dumps(bad, indent=1, ensure_ascii=False) + "\n")
        else:  # a resumed run whose data was fixed: no stale record
            (self.run_dir / "bad_rows.json").unlink(missing_ok=True)
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
        tok_s = m["real_tokens"] / dt  # not the nominal step_tokens: pads are not throughput
        seq_len = self.plans[self.phase_idx].seq_len
        rec = {"step": self.step, "phase": self.cfg.phases[self.phase_idx].name, "tokens": self.tokens_seen,
               **{k: v for k, v in m.items() if k not in ("step_tokens", "real_tokens")},
               "tokens_per_s": tok_s,
               "mfu": mfu(tok_s, self.model_config.flops_per_token(seq_len), self.peak_flops, self.info.world)
               if self.peak_flops else None,
               "peak_mem_mb": peak_memory_mb(self.info.device), "time": time.time()}
        if self.compile:  # a recompile mid-run costs minutes on a big model: visible in the log
            rec |= parallel.compile_stats()
        self.history.append(rec)
        # the last step always: a short run (a real model on a CPU) otherwise logs nothing at all
        if not self.info.is_main or (self.step % self.cfg.logging.every and self.step != self.total_steps):
            return
        self._jsonl.write(json.dumps(rec) + "\n")
        self._jsonl.flush()
        if getattr(self, "_tb", None) is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, self.step)
        if getattr(self, "_wandb", None) is not None:
            self._wandb.log(rec, step=self.step)


__all__ = ["Trainer", "ObjectiveOutput", "Objective", "DataSource", "ValidationSource",
           "TrainingDiverged", "TrainingInterrupted", "FAULT_ENV"]
