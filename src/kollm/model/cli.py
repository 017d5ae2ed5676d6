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


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


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
    print(f"  training FLOPs/token at T={r['seq_len']}: {r['flops_per_token']:.3e}")
    for prec, m in r["memory_bytes"].items():
        print(f"  {prec}: weights {_gib(m['weights'])}, grads {_gib(m['grads'])}, AdamW {_gib(m['adamw_states'])}, total {_gib(m['total'])}")
    return 0
