"""Run under `torchrun --nproc_per_node 2` by test_parallel.py: for each parallel mode, train the
tiny model on the synthetic source (FSDP also from the meta device), then resume from the mid-run checkpoint in a fresh trainer and
finish again; rank 0 writes both loss curves to the JSON file named by argv[1]."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from synthetic import SyntheticLoader  # noqa: E402

from kollm.model.config import get_preset  # noqa: E402
from kollm.model.transformer import build_model  # noqa: E402
from kollm.train.config import config_from_dict  # noqa: E402
from kollm.train.parallel import init_distributed  # noqa: E402
from kollm.train.objectives.lm import LMObjective  # noqa: E402
from kollm.train.trainer import Trainer  # noqa: E402


def run_config(mode: str, out_dir: str, steps: int = 4, ac: bool = False, precision: str = "fp32") -> dict:
    """Shared with the single-process reference in test_parallel.py."""
    return {
        "output_dir": out_dir, "seed": 0,
        "batch": {"tokens": 8 * 32},  # 8 sequences of 32 per step, any world size
        "optimizer": {"lr": 3e-3}, "schedule": {"warmup_steps": 2},
        "parallel": {"mode": mode, "activation_checkpointing": ac, "mixed_precision": precision},
        "checkpoint": {"every": 2, "keep": 2, "export_hf": False},
        "logging": {"progress": False},
        # a phase switch at the mid-run checkpoint; MTP α 0 in the second phase leaves the MTP block
        # without a loss term, which DDP must survive
        "phases": [{"name": "stable", "steps": steps // 2, "mtp_alpha": 0.2, "data": {"seq_len": 32, "batch_size": 2}},
                   {"name": "anneal", "steps": steps - steps // 2, "mtp_alpha": 0.0, "weight_decay": 0.033,
                    "data": {"seq_len": 32, "batch_size": 2}}],
    }


def train(mode: str, out_dir: str, rank: int, world: int, info, resume: bool = False, ac: bool = False,
          device: str = "cpu", steps: int = 4, precision: str = "fp32") -> list:
    torch.manual_seed(0)
    model = build_model(get_preset("tiny-sandwich-mtp"), device=device)
    cfg = config_from_dict(run_config(mode, out_dir, steps=steps, ac=ac, precision=precision))
    trainer = Trainer(cfg, model, LMObjective("xlda"), SyntheticLoader(rank=rank, world_size=world), info)
    if resume:
        trainer.total_steps = 2  # stop at the mid-run checkpoint, as a crash would leave it
        trainer.fit()
        trainer = Trainer(cfg, build_model(get_preset("tiny-sandwich-mtp")), LMObjective("xlda"),
                          SyntheticLoader(rank=rank, world_size=world), info)
        history = trainer.fit(resume=True)
        return [None, None] + [h["loss"] for h in history]
    return [h["loss"] for h in trainer.fit()]


def main() -> None:
    out, workdir = Path(sys.argv[1]), Path(sys.argv[2])
    info = init_distributed()
    results = {}
    for mode in ("ddp", "zero1", "fsdp"):
        results[mode] = train(mode, str(workdir / mode), info.rank, info.world, info)
        results[mode + "+resume"] = train(mode, str(workdir / (mode + "-r")), info.rank, info.world, info, resume=True)
    results["fsdp+ac"] = train("fsdp", str(workdir / "fsdp-ac"), info.rank, info.world, info, ac=True)
    # ZeRO-1 as the report ran it: bf16 weights on every rank over fp32 master shards, 20 steps
    results["zero1+bf16"] = train("zero1", str(workdir / "zero1-bf16"), info.rank, info.world, info, steps=20,
                                  precision="bf16")
    # built on the meta device, each rank initialises only its shard (how pretrain builds for fsdp)
    results["fsdp+meta"] = train("fsdp", str(workdir / "fsdp-meta"), info.rank, info.world, info, device="meta")
    if info.rank == 0:
        out.write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
