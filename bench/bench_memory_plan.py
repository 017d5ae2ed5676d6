"""The dry run's memory plan against a measurement, for every parallel mode × activation
checkpointing × precision: peak RSS of two training steps (the second one has the AdamW moments
and the activations alive at once) of a reduced trillion-7b-shaped model (sandwich norm, MTP,
2 blocks of d 256, f 688, 2 heads of 128, vocabulary 32,768 so the loss matters; micro-batch
1 × 512 per rank) above the process's RSS before the model is built (after a warm-up run of a
model 2 % the size), on each rank, against `memory_plan` for the same config, one JSON line per
rank (docs/memory-plan.md has the table).

    PYTHONPATH=src python bench/bench_memory_plan.py [--mode single ddp zero1 fsdp] [--ac off blocks op]
                                                    [--precision fp32 bf16] [--world-size 2]

`single` runs one process; ddp, zero1 and fsdp run `torchrun --nproc_per_node WORLD` on gloo (CPU).
Sharded modes build the model on the meta device, as `kollm pretrain` does. RSS is made to count
tensors as CUDA's allocator counts them: glibc hands every block of 64 KiB or more straight to
mmap (MALLOC_MMAP_THRESHOLD_, which also turns off its sliding threshold), so a freed tensor leaves
RSS at once, and fills each new block (MALLOC_PERTURB_), so an allocated tensor is resident before
it is written (DDP's gradient buckets are only written in backward; untouched pages are not RSS).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = {"off": False, "blocks": True, "op": "op"}
MODES = ("single", "ddp", "zero1", "fsdp")
SHAPE = {"n_layers": 2, "dim": 256, "ffn_dim": 688, "n_heads": 2, "n_kv_heads": 2, "head_dim": 128, "vocab_size": 32768}
B, T, STEPS = 1, 512, 2
ENV = {"OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_PERTURB_": "165"}


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss() -> int:
    """VmHWM: the most RSS since the last reset (clear_refs 5)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(mode: str, ac_name: str, precision: str) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_check import RandomDocs

    from kollm.model.config import get_preset
    from kollm.model.transformer import build_model
    from kollm.train.config import config_from_dict
    from kollm.train.memory import memory_plan
    from kollm.train.objectives.lm import LMObjective
    from kollm.train.parallel import init_distributed
    from kollm.train.trainer import Trainer

    info = init_distributed()
    ac = SETTINGS[ac_name]
    mc = get_preset("trillion-7b", **SHAPE)
    cfg = config_from_dict({
        "output_dir": tempfile.mkdtemp(prefix="kollm-bench-memory-plan-"), "batch": {"tokens": info.world * B * T},
        "optimizer": {"lr": 1e-4}, "schedule": {"warmup_steps": 1}, "logging": {"progress": False},
        "checkpoint": {"every": 0, "export_hf": False},
        "parallel": {"mode": mode, "mixed_precision": precision, "activation_checkpointing": ac},
        "phases": [{"name": "p", "steps": STEPS, "mtp_alpha": 0.1, "data": {"seq_len": T, "batch_size": B}}]})

    def train(mc, cfg) -> None:
        model = build_model(mc, device="meta" if mode in ("zero1", "fsdp") else "cpu")
        t = Trainer(cfg, model, LMObjective("causal", mtp_alpha=0.1), RandomDocs(mc.vocab_size, T, info.rank), info)
        t.apply_phase(0)
        for _ in range(STEPS):
            t.train_step()

    # the idle process has trained once (a model of 2 % the size, same settings): the kernels'
    # code and one-off buffers (~50 MB of MKL/oneDNN pages, gloo's pools) are in RSS before `base`
    torch.manual_seed(0)
    train(get_preset("trillion-7b", **(SHAPE | {"vocab_size": 512, "dim": 128, "ffn_dim": 344, "n_heads": 1,
                                                 "n_kv_heads": 1})), cfg)
    gc.collect()
    torch.manual_seed(0)
    base = rss()
    # The peak from here on: ru_maxrss is the whole life's, so a spike before `base` (imports, the
    # warm-up) once read as 1.78x the plan in a full-suite run. Writing 5 to clear_refs resets VmHWM.
    Path("/proc/self/clear_refs").write_text("5")
    train(mc, cfg)
    peak = peak_rss() - base
    plan = memory_plan(mc, mode, info.world, B, T, precision, ac or True, accumulating=False)  # one micro-batch a step
    total = plan.total(ac)
    if info.distributed:
        torch.distributed.destroy_process_group()
    return {"mode": mode, "checkpointing": ac_name, "precision": precision, "rank": info.rank, "world": info.world,
            "measured_mb": round(peak / 2**20, 1), "planned_mb": round(total / 2**20, 1),
            "measured_over_planned": round(peak / total, 3),
            "plan_mb": {k: round(getattr(plan, k) / 2**20, 1) for k in ("params", "grads", "optimizer", "buffers")}
            | {"activations": round((plan.activations_ckpt if ac else plan.activations) / 2**20, 1)}}


def run_child(mode: str, ac: str, precision: str, world: int = 2) -> list[dict]:
    """One measurement in fresh processes: one row per rank."""
    env = {**os.environ, **ENV}
    with tempfile.TemporaryDirectory() as d:
        worker = [__file__, "--worker", d, "--mode", mode, "--ac", ac, "--precision", precision]
        if mode == "single":
            cmd = [sys.executable, *worker]
        else:
            cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", str(world),
                   *worker]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"{mode} {ac} {precision}: exit {p.returncode}\n{p.stderr[-3000:]}")
        return [json.loads(f.read_text()) for f in sorted(Path(d).glob("rank*.json"))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--ac", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    ap.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    ap.add_argument("--world-size", type=int, default=2, help="ranks for ddp, zero1 and fsdp")
    ap.add_argument("--worker", metavar="DIR", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        row = measure(a.mode[0], a.ac[0], a.precision[0])
        (Path(a.worker) / f"rank{row['rank']}.json").write_text(json.dumps(row))
        return
    for precision in a.precision:
        for mode in a.mode:
            for ac in a.ac:
                for row in run_child(mode, ac, precision, a.world_size):
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
