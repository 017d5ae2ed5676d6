"""The dry run's memory plan against a measurement: peak RSS of three training steps of a reduced
trillion-7b-shaped model (sandwich norm, MTP, 2 blocks of d 512, f 1376, 4 heads of 128, vocabulary
32,768 so the loss matters; micro-batch 2 × 1024) above the process's RSS before the model is
built, for each activation-checkpointing setting × precision, one process each (single mode).

    PYTHONPATH=src python bench/bench_memory_plan.py [--only AC PRECISION]

RSS counts what the allocator holds, so transient buffers the plan leaves out (docs/memory-plan.md,
"Not counted": SDPA's T×T probabilities on CPU, a block's transient gradients) show up here.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

SETTINGS = {"off": False, "blocks": True, "op": "op"}


def measure(ac_name: str, precision: str) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_check import RandomDocs

    from kollm.model.config import get_preset
    from kollm.model.transformer import build_model
    from kollm.train.config import config_from_dict
    from kollm.train.memory import memory_plan
    from kollm.train.parallel import DistInfo
    from kollm.train.trainer import LMObjective, Trainer

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    ac = SETTINGS[ac_name]
    mc = get_preset("trillion-7b", n_layers=2, dim=512, ffn_dim=1376, n_heads=4, n_kv_heads=4, head_dim=128,
                    vocab_size=32768)
    B, T = 2, 1024
    cfg = config_from_dict({
        "output_dir": "/tmp/kollm-bench-memory-plan", "batch": {"tokens": B * T}, "optimizer": {"lr": 1e-4},
        "schedule": {"warmup_steps": 1}, "logging": {"progress": False}, "checkpoint": {"every": 0, "export_hf": False},
        "parallel": {"mixed_precision": precision, "activation_checkpointing": ac},
        "phases": [{"name": "p", "steps": 3, "mtp_alpha": 0.1, "data": {"seq_len": T, "batch_size": B}}]})
    torch.manual_seed(0)
    base = rss()
    t = Trainer(cfg, build_model(mc), LMObjective("causal", mtp_alpha=0.1), RandomDocs(mc.vocab_size, T), DistInfo())
    t.apply_phase(0)
    for _ in range(3):
        t.train_step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    plan = memory_plan(mc, "single", 1, B, T, precision, ac or True).total(ac)
    return {"checkpointing": ac_name, "precision": precision, "measured_mb": round(peak / 2**20, 1),
            "planned_mb": round(plan / 2**20, 1), "measured_over_planned": round(peak / plan, 3)}


def run_child(ac: str, precision: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--only", ac, precision], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs=2, metavar=("AC", "PRECISION"))
    a = ap.parse_args()
    if a.only:
        print(json.dumps(measure(*a.only)))
        return
    for precision in ("fp32", "bf16"):
        for ac in SETTINGS:
            print(json.dumps(run_child(ac, precision)), flush=True)


if __name__ == "__main__":
    main()
