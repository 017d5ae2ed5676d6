"""Dry-run plans: what one stage would cost, printed by the stage itself (`kollm STAGE ... --dry-run`)
and collected as JSON by `kollm run RECIPE --dry-run` (`--plan-json`).

One planner per stage, in the stage's own module; this file holds only what they share: the
command-line flags, the compute parts and their GPU-hours, input sizes, and the JSON/text output.

A plan is a dict:
    {"stage", "parts": [{"name", "kind", "tokens", "seq_len", "flops"}], "flops", "gpu_hours",
     "world", "mfu", "gen_mfu", "peak_flops", "memory_per_rank", "device_memory", "fits",
     "bytes_read", "bytes_written", "requests", "notes": [...], "text"}
`kind` is `train` (forward + backward: 6N + 12·L·d·T FLOPs per token, kollm.model.config), `forward`
(a third of that: a reference or teacher pass, an evaluation) or `generate` (forward FLOPs per
token too, but decoding is memory-bound: its GPU-hours use `--gen-mfu`, 10 % by default, which is
what batched decoding of 7-8B models typically reaches on H100s; kollm's own engine reaches less).
GPU-hours are FLOPs / (MFU · peak FLOP/s) / 3600 per part, summed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from pathlib import Path

# The device every plan assumes unless told otherwise (kollm.train.flops and kollm.train.memory use them)
H100_BF16_DENSE = 989e12  # FLOP/s, SXM, dense (no sparsity)
GB = 1e9
H100_MEMORY = 80 * GB  # H100 SXM/PCIe 80 GB
# allocator fragmentation, CUDA context, NCCL buffers, kernels' workspaces: not counted above
RESERVE_FRACTION = 0.1
GEN_MFU = 0.1


def add_plan_args(p: argparse.ArgumentParser, dry_run_help: str = "print the compute plan and exit",
                  dry_run: bool = True) -> None:
    """The dry-run flags every planning stage takes (`dry_run=False`: the stage defines --dry-run itself)."""
    if dry_run:
        p.add_argument("--dry-run", action="store_true", help=dry_run_help)
    p.add_argument("--plan-json", action="store_true", help="dry run: print the plan as one JSON object")
    p.add_argument("--peak-flops", type=float, default=H100_BF16_DENSE,
                   help="dry run: peak FLOP/s per GPU (default: H100 bf16 dense, 989e12)")
    p.add_argument("--mfu", type=float, default=0.4, help="dry run: model FLOPs utilisation (default 0.4)")
    p.add_argument("--gen-mfu", type=float, default=GEN_MFU,
                   help=f"dry run: FLOPs utilisation of sampling/decoding (default {GEN_MFU})")
    p.add_argument("--world-size", type=int, default=None,
                   help="dry run: ranks the run is planned for (default: WORLD_SIZE or 1)")
    p.add_argument("--device-memory", type=float, default=H100_MEMORY,
                   help="dry run: memory per device in bytes (default: 80e9, an 80 GB H100)")


def world_of(args: argparse.Namespace) -> int:
    return args.world_size or int(os.environ.get("WORLD_SIZE", "1"))


def part(name: str, kind: str, tokens: float, flops_per_token: float, seq_len: int | None = None) -> dict:
    """A compute part; `flops_per_token` is the training count (6N + 12·L·d·T): forward-only
    kinds take a third of it."""
    if kind not in ("train", "forward", "generate"):
        raise ValueError(f"plan part kind: train | forward | generate, got {kind!r}")
    per = flops_per_token if kind == "train" else flops_per_token / 3
    return {"name": name, "kind": kind, "tokens": int(tokens), "seq_len": seq_len, "flops": float(tokens) * per}


def gpu_hours(p: dict, mfu: float, gen_mfu: float, peak_flops: float) -> float:
    return p["flops"] / ((gen_mfu if p["kind"] == "generate" else mfu) * peak_flops) / 3600


def path_bytes(spec: str | os.PathLike) -> int | None:
    """Bytes of a file, of every file under a directory, or of a glob's files; None when nothing is there."""
    p = Path(spec)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    hits = [Path(h) for h in glob.glob(str(spec))]
    return sum(path_bytes(h) or 0 for h in hits) if hits else None


def make(stage: str, args: argparse.Namespace, parts: list[dict] = (), memory: float | None = None,
         notes: list[str] = (), text: str = "", **extra) -> dict:
    """The plan dict: parts with their GPU-hours, totals, memory against the device."""
    world = world_of(args) if hasattr(args, "world_size") else 1
    mfu, gen_mfu = getattr(args, "mfu", 0.4), getattr(args, "gen_mfu", GEN_MFU)
    peak = getattr(args, "peak_flops", H100_BF16_DENSE)
    device = getattr(args, "device_memory", H100_MEMORY)
    parts = [dict(p, gpu_hours=gpu_hours(p, mfu, gen_mfu, peak)) for p in parts]
    plan = {"stage": stage, "parts": parts, "flops": sum(p["flops"] for p in parts),
            "gpu_hours": sum(p["gpu_hours"] for p in parts), "world": world, "mfu": mfu, "gen_mfu": gen_mfu,
            "peak_flops": peak, "memory_per_rank": memory, "device_memory": device,
            "fits": None if memory is None else memory <= device * (1 - RESERVE_FRACTION),
            "bytes_read": None, "bytes_written": None, "requests": None, "notes": list(notes)}
    plan.update(extra)
    plan["text"] = text or format_parts(plan)
    return plan


def input_plan(stage: str, inputs: list[str], note: str = "") -> dict:
    """The kollm.plan dict of a stage that streams its inputs once (curation, tokenization): their bytes."""
    sizes = {str(i): path_bytes(i) for i in inputs}
    notes = [f"{i}: " + ("not there yet" if b is None else f"{b:,} bytes") for i, b in sizes.items()]
    missing = [i for i, b in sizes.items() if b is None]
    return make(stage, argparse.Namespace(), notes=notes + ([note] if note else []),
                bytes_read=sum(b or 0 for b in sizes.values()), inputs_missing=missing)


def format_parts(plan: dict) -> str:
    lines = []
    if plan["parts"]:
        lines.append(f"{'part':<34}{'kind':<10}{'tokens':>12}{'FLOPs':>12}{'GPU-h':>11}")
        for p in plan["parts"]:
            lines.append(f"{p['name']:<34}{p['kind']:<10}{human(p['tokens']):>12}{p['flops']:>12.3e}"
                         f"{p['gpu_hours']:>11,.1f}")
        lines.append(f"{'total':<34}{'':<10}{'':>12}{plan['flops']:>12.3e}{plan['gpu_hours']:>11,.1f}")
        lines.append(f"GPU-hours at MFU {plan['mfu']:.1%} (sampling {plan['gen_mfu']:.1%}) of "
                     f"{plan['peak_flops'] / 1e12:,.0f} TFLOP/s per GPU; {plan['world']} rank(s)")
    if plan["memory_per_rank"] is not None:
        lines.append(f"memory per rank {plan['memory_per_rank'] / GB:.1f} GB of {plan['device_memory'] / GB:.0f} GB"
                     + ("" if plan["fits"] else "  WARNING: does not fit"))
    for key, label in (("bytes_read", "reads"), ("bytes_written", "writes")):
        if plan.get(key) is not None:
            lines.append(f"{label} {human_bytes(plan[key])}")
    lines += plan["notes"]
    return "\n".join(lines)


def human(x: float) -> str:
    for unit, v in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= v:
            return f"{x / v:.3g}{unit}"
    return f"{x:.3g}"


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit, v in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= v:
            return f"{n / v:.3g} {unit}"
    return f"{n:.0f} B"


def emit(plan: dict, args: argparse.Namespace) -> int:
    """Print the plan: one JSON object (--plan-json) or its text."""
    if getattr(args, "plan_json", False):
        print(json.dumps(plan))
    else:
        print(plan["text"])
    return 0


__all__ = ["add_plan_args", "world_of", "part", "gpu_hours", "path_bytes", "make", "emit", "human", "human_bytes", "GEN_MFU"]
