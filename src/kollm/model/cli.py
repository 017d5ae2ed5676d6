"""`kollm model info PRESET`: parameters, FLOPs per token and training memory of a preset."""

from __future__ import annotations

import argparse
import json

from kollm.model.config import PRESETS, get_preset, memory_bytes


def info(preset: str, seq_len: int | None = None) -> dict:
    cfg = get_preset(preset)
    T = seq_len or cfg.max_seq_len
    return {
        "preset": preset,
        "config": cfg.to_dict(),
        "params_total": cfg.num_params(include_mtp=False),
        "params_non_embedding": cfg.num_non_embedding_params(include_mtp=False),
        "params_with_mtp": cfg.num_params(include_mtp=True),
        "seq_len": T,
        "flops_per_token": cfg.flops_per_token(T),
        "memory_bytes": memory_bytes(cfg),
    }


def human_bytes(n: float) -> str:
    """Binary units that fit the number: 1.4 MiB for a tiny preset, 59.8 GiB for an 8B one."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError



def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kollm model", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    pi = sub.add_parser("info", help="parameters, FLOPs per token, memory")
    pi.add_argument("preset", help=f"one of: {', '.join(sorted(PRESETS))}")
    pi.add_argument("--seq-len", type=int, default=None, help="sequence length for FLOPs (default: preset max)")
    pi.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    r = info(args.preset, args.seq_len)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"{r['preset']}: {r['params_total']:,} parameters ({r['params_non_embedding']:,} non-embedding)")
    if r["params_with_mtp"] != r["params_total"]:
        print(f"  with MTP head (training only): {r['params_with_mtp']:,}")
    at = "the preset's full context; --seq-len to change" if args.seq_len is None else "--seq-len"
    print(f"  training FLOPs/token at T={r['seq_len']} ({at}): {r['flops_per_token']:.3e}")
    notes = {"fp32": "everything fp32", "bf16": "bf16 weights and grads; the AdamW figure holds fp32 moments and "
             "the fp32 master copy of the weights, hence the same total as fp32"}
    for prec, m in r["memory_bytes"].items():
        print(f"  {prec}: weights {human_bytes(m['weights'])}, grads {human_bytes(m['grads'])}, "
              f"AdamW {human_bytes(m['adamw_states'])}, total {human_bytes(m['total'])} ({notes.get(prec, '')})")
    print("  (training memory without activations, which grow with batch and sequence length)")
    return 0
