"""Resumable training checkpoints with torch.distributed.checkpoint (DCP), torchtitan-style.

`ROOT/step-00000100/` holds the DCP shards of the model and optimizer (each rank writes its own
part: FSDP shards, ZeRO-1 optimizer shards), plus small JSON files: `trainer.json` (step, tokens,
phase, run config, model config) and `rank-<r>.json` per rank (data-loader state and the torch
RNG state, base64). Nothing is pickled by kollm; the scheduler is a pure function of the step.

Writes are atomic: everything goes to `.tmp-step-…`, all ranks meet at a barrier (and check that
they see each other's files: across nodes the directory must be on a shared filesystem), then rank 0
renames it into place, so a crash never leaves a half checkpoint that `latest()` would pick.
Only the last `keep` checkpoints are kept. A state holding NaN/inf (parameters or optimizer
moments) is never written or resumed. `checksums.json` records a CRC-32 per file at save; load
and export verify it, so a flipped byte is an error naming the file, not silently wrong weights.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import warnings
import zlib
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.checkpoint.stateful import Stateful

from kollm.train.parallel import unwrap

STEP_DIR = re.compile(r"^step-(\d{8})$")


class ModelState(Stateful):
    """The model's parameters under their plain (HF) names, whatever wrapper or sharding it has."""

    def __init__(self, model: nn.Module):
        self.model = model

    def state_dict(self) -> dict:
        return get_model_state_dict(self.model)

    def load_state_dict(self, state: dict) -> None:
        set_model_state_dict(self.model, state)


class OptimizerState(Stateful):
    """AdamW moments keyed by parameter name (DCP's distributed state-dict API; the FSDP2 shards
    of zero1 and fsdp included)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict:
        return get_optimizer_state_dict(self.model, self.optimizer)

    def load_state_dict(self, state: dict) -> None:
        set_optimizer_state_dict(self.model, self.optimizer, state)


# One process without a process group is a supported DCP mode; its warning would fire every save.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _check_shared(tmp: Path, rank: int) -> None:
    """Every rank must see what the others wrote: across nodes the checkpoint directory has to be on a
    shared filesystem, or rank 0 would publish a checkpoint missing the other nodes' shards (found only
    at resume). Each rank looks for its neighbour's file; all ranks fail together, none hangs."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    world = dist.get_world_size()
    missing = not (tmp / f"rank-{(rank + 1) % world}.json").is_file()
    flags: list = [None] * world
    dist.all_gather_object(flags, missing)
    if any(flags):
        ranks = [(r + 1) % world for r, f in enumerate(flags) if f]
        shutil.rmtree(tmp, ignore_errors=True)  # never published: no rank may resume from it
        raise RuntimeError(f"{tmp}: files written by rank(s) {ranks} are not visible to every rank; output_dir "
                           "must be on a filesystem shared by all nodes, at the same absolute path")


def rng_state() -> str:
    return base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()


def set_rng_state(state: str) -> None:
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state)), dtype=torch.uint8))


def step_dirs(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def latest(root: str | Path) -> Path | None:
    dirs = step_dirs(root)
    return dirs[-1] if dirs else None


class NonFiniteState(ValueError):
    """Parameters or optimizer moments hold NaN/inf: such a state is never written as a checkpoint."""


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # a DTensor's (FSDP) shard on this rank


def nonfinite(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[int, list[str]]:
    """(count over all ranks, names on this rank) of parameters and optimizer-state tensors holding
    NaN or inf. The loss and gradient-norm guard cannot see an update that is itself bad (an
    infinite LR, an overflowing moment): this looks at what a checkpoint would hold."""
    named = list(unwrap(model).named_parameters())
    names = {p: n for n, p in named}
    tensors = [(n, _local(p)) for n, p in named]
    opt = getattr(optimizer, "optim", optimizer)  # ZeRO-1 keeps the moments in a per-rank AdamW
    for p, st in (opt.state.items() if opt is not None else ()):
        tensors += [(f"optimizer {k} of {names.get(p, '?')}", _local(v)) for k, v in st.items()
                    if torch.is_tensor(v) and v.is_floating_point()]
    flags = torch.stack([torch.isfinite(t).all() for _, t in tensors]) if tensors else torch.ones(0, dtype=torch.bool)
    bad = [n for (n, _), ok in zip(tensors, flags.tolist()) if not ok]
    count = torch.tensor([len(bad)], device=tensors[0][1].device if tensors else "cpu")
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)  # every rank decides alike, or the others would wait at the barrier
    return int(count.item()), bad


CHECKSUMS = "checksums.json"


class CorruptCheckpoint(ValueError):
    """A checkpoint file differs from what was written (DCP itself has no checksum)."""


def _crc32(path: Path) -> str:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def checksums(d: Path) -> dict[str, str]:
    """CRC-32 of every file of a checkpoint directory (detects any flipped byte; GB/s, so cheap
    next to writing the file)."""
    return {f.name: _crc32(f) for f in sorted(d.iterdir()) if f.is_file() and f.name != CHECKSUMS}


def verify(path: str | Path) -> None:
    """Raise CorruptCheckpoint naming the first file whose CRC-32 is not the one recorded at save
    (or that is missing). Checkpoints written before checksums existed are not checked."""
    path = Path(path)
    rec = path / CHECKSUMS
    if not rec.is_file():
        return
    for name, want in json.loads(rec.read_text()).items():
        f = path / name
        if not f.is_file():
            raise CorruptCheckpoint(f"{f}: missing (recorded in {CHECKSUMS})")
        if (got := _crc32(f)) != want:
            raise CorruptCheckpoint(f"{f}: checksum mismatch (crc32 {got}, recorded {want} at save): "
                                    "the file changed after the checkpoint was written")


def save(root: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
         trainer_state: dict, rank_state: dict, keep: int = 3) -> Path:
    """Write checkpoint `step` under `root` from every rank; returns its final path. Raises
    NonFiniteState (writing nothing) when a parameter or optimizer moment is NaN/inf."""
    root = Path(root)
    final, tmp = root / f"step-{step:08d}", root / f".tmp-step-{step:08d}"
    if final.exists():
        return final
    count, bad = nonfinite(model, optimizer)
    if count:
        raise NonFiniteState(f"not writing checkpoint step {step}: {count} parameter/optimizer tensors hold NaN "
                             f"or inf" + (f" (on this rank: {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
                                          if bad else ""))
    rank = _rank()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash
        tmp.mkdir(parents=True)
    _barrier()
    dcp.save({"model": ModelState(model), "optim": OptimizerState(model, optimizer)}, checkpoint_id=str(tmp))
    (tmp / f"rank-{rank}.json").write_text(json.dumps({**rank_state, "rng": rng_state()}))
    _barrier()
    _check_shared(tmp, rank)
    if rank == 0:
        (tmp / "trainer.json").write_text(json.dumps({**trainer_state, "step": step}, indent=2) + "\n")
        (tmp / CHECKSUMS).write_text(json.dumps(checksums(tmp), indent=1) + "\n")
        tmp.rename(final)
        for old in step_dirs(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def read_trainer_state(path: str | Path) -> dict:
    f = Path(path) / "trainer.json"
    if not f.is_file():
        raise FileNotFoundError(f"{path}: not a kollm checkpoint (no trainer.json)")
    return json.loads(f.read_text())


def load(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict]:
    """Restore model (and optimizer) in place from every rank; returns (trainer state, this rank's state)."""
    path = Path(path)
    rank = _rank()
    for f in ("trainer.json", f"rank-{rank}.json"):
        if not (path / f).is_file():
            raise FileNotFoundError(f"{path}: not a complete kollm checkpoint (no {f}; "
                                    "was it written with a different number of ranks?)")
    verify(path)
    state: dict = {"model": ModelState(model)}
    if optimizer is not None:
        state["optim"] = OptimizerState(model, optimizer)
    dcp.load(state, checkpoint_id=str(path))
    count, bad = nonfinite(model, optimizer)
    if count:  # written before this check existed: never resume into NaN
        raise NonFiniteState(f"{path}: holds NaN/inf in {count} tensors ({', '.join(bad[:3])})")
    rank_state = json.loads((path / f"rank-{rank}.json").read_text())
    set_rng_state(rank_state.pop("rng"))
    return json.loads((path / "trainer.json").read_text()), rank_state


def load_model_only(path: str | Path, model: nn.Module) -> None:
    """Fill an unsharded model from a checkpoint in one process (export); any world size wrote it."""
    verify(path)
    sd = get_model_state_dict(model, options=StateDictOptions())
    dcp.load({"model": sd}, checkpoint_id=str(path), no_dist=True)
    set_model_state_dict(model, sd)


__all__ = ["save", "load", "load_model_only", "latest", "step_dirs", "ModelState", "OptimizerState", "verify",
           "checksums", "CorruptCheckpoint", "nonfinite", "NonFiniteState"]
