"""`kollm model info PRESET`: parameters, FLOPs per token and training memory of a preset.
`kollm model scale`: the Trillion report's transfer from a proxy run to the full run (§3.3):
learning rate μ ∝ C^−0.125 (DeepSeek LLM's law; the report's ×0.57 from its 1.8B-parameter /
100B-token proxy to 7B / 2T) and non-vocabulary size N_v ∝ C^0.42 (Tao et al. 2024; the report's
"at least 6.3 times" more multilingual vocabulary), with compute C = 6·N·D."""

from __future__ import annotations

import argparse
import json

from kollm.argtypes import parse_count
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


LR_EXPONENT = -0.125  # DeepSeek LLM (2024): η_opt = 0.3118 · C^−0.1250
VOCAB_EXPONENT = 0.42  # Tao et al. (2024), as the Trillion report states it


def scale(proxy_params: float, proxy_tokens: float, params: float, tokens: float) -> dict:
    """Compute ratio C/C_proxy (C = 6·N·D) and the factors it gives the LR and N_v."""
    ratio = (params * tokens) / (proxy_params * proxy_tokens)
    return {"proxy_compute": 6 * proxy_params * proxy_tokens, "compute": 6 * params * tokens,
            "compute_ratio": ratio, "lr_factor": ratio ** LR_EXPONENT, "vocab_factor": ratio ** VOCAB_EXPONENT}


def _scale_main(args) -> int:
    params = parse_count(args.params, "--params") if args.params else get_preset(args.preset).num_params(include_mtp=False)
    r = scale(parse_count(args.proxy_params, "--proxy-params"), parse_count(args.proxy_tokens, "--proxy-tokens"),
              params, parse_count(args.tokens, "--tokens"))
    r["params"] = params
    if args.proxy_lr is not None:
        r["lr"] = args.proxy_lr * r["lr_factor"]
    if args.proxy_vocab is not None:
        r["vocab"] = args.proxy_vocab * r["vocab_factor"]
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"compute  proxy {r['proxy_compute']:.3e} FLOPs ({args.proxy_params} params × {args.proxy_tokens} tokens), "
          f"target {r['compute']:.3e} ({params / 1e9:.2f}B × {args.tokens}): ×{r['compute_ratio']:.1f}")
    print(f"learning rate  μ ∝ C^{LR_EXPONENT}: ×{r['lr_factor']:.3f}   (Trillion §3.3: ×0.57)"
          + (f"   {args.proxy_lr:g} → {r['lr']:.3g}" if "lr" in r else ""))
    print(f"vocabulary     N_v ∝ C^{VOCAB_EXPONENT}: ×{r['vocab_factor']:.2f}   (Trillion §3.3: at least ×6.3)"
          + (f"   {args.proxy_vocab:,} → {r['vocab']:,.0f} tokens" if "vocab" in r else ""))
    return 0


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
    ps = sub.add_parser("scale", help="LR and vocabulary transfer from a proxy run (Trillion §3.3)")
    ps.add_argument("--proxy-params", default="1.8B", help="proxy model parameters (default 1.8B, the report's)")
    ps.add_argument("--proxy-tokens", default="100B", help="proxy training tokens (default 100B)")
    ps.add_argument("--preset", default="trillion-7b", help="target preset; its parameters without MTP are N")
    ps.add_argument("--params", default=None, help="target parameters instead of a preset's, e.g. 7B")
    ps.add_argument("--tokens", default="2T", help="target training tokens (default 2T)")
    ps.add_argument("--proxy-lr", type=float, default=None, help="the proxy's best LR, to print the target's")
    ps.add_argument("--proxy-vocab", type=int, default=None, help="the proxy's best multilingual vocabulary size")
    ps.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "scale":
        return _scale_main(args)
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
