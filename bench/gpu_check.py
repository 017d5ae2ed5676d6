"""One GPU check (bench/gpu_check.sh runs it): where kollm stands on a CUDA device in a few minutes.

1. FlexAttention (compiled) forward and backward against SDPA with the same dense mask, bf16, for
   the document and XLDA policies; the block mask's sparsity; fwd+bwd time of each.
2. Training tokens/s and MFU through the Trainer's own step (bf16 autocast, fp32 master weights
   and AdamW), eager and `parallel.compile`, on a trillion-7b-shaped model cut to --layers blocks
   (d 4096, f 11008, 32 heads, vocab 128,256, sandwich norm, MTP) at micro-batch --batch × --seq,
   XLDA mask; peak memory against the dry run's plan (kollm.train.memory) for the same shape.
   Also with the recipes' block checkpointing (`train_ckpt`, eager): planned against measured.
3. The chunked LM head + loss (kollm.train.objectives.chunked) at --loss-tokens × 128,256 vocabulary,
   d 4096, bf16 autocast over fp32 head weights, against the dense path: peak memory above the
   inputs (planned: kollm.train.memory's loss terms) and tokens/s of forward + backward.
4. Batch-1 greedy decode tokens/s of the same model in bf16 (kollm.model.generate), eager and with
   the compiled static-cache step (CUDA graphs), its compile time apart.
Every part is timed and caught on its own; a JSON summary goes to --out. Without CUDA it writes
{"cuda": false} and exits 0, unless --smoke-cpu runs every part on CPU at tiny sizes (to keep
the script working where there is no GPU).

    python bench/gpu_check.py --out gpu_check.json [--layers 4 --batch 2 --seq 4096 --steps 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import traceback

import torch


class RandomDocs:
    """The trainer's data-source protocol: random tokens cut into documents of two languages."""

    def __init__(self, vocab: int, seq: int, device_seed: int = 0):
        self.vocab, self.seq, self.gen = vocab, seq, torch.Generator().manual_seed(device_seed)

    def set_phase(self, phase) -> None:
        self.seq = phase.seq_len

    def next_batch(self, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        b = batch_size or 1
        ids = torch.randint(0, self.vocab, (b, self.seq), generator=self.gen)
        cuts = torch.rand(b, self.seq, generator=self.gen) < 8 / self.seq  # ~8 documents per row
        docs = torch.cumsum(cuts, 1)
        return {"input_ids": ids, "labels": ids.clone(), "doc_ids": docs, "lang_ids": docs % 2}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _flex_vs_sdpa(flex, policy: str, device: torch.device, seq: int, dtype: torch.dtype, grad: bool) -> dict:
    from kollm.model.masks import block_mask, dense_mask

    B, H, KV, D = 2, 8, 2, 64
    doc = torch.sort(torch.randint(0, 6, (B, seq), device=device), 1).values
    lang = doc % 2
    q = torch.randn(B, H, seq, D, device=device, dtype=dtype, requires_grad=grad)
    k = torch.randn(B, KV, seq, D, device=device, dtype=dtype, requires_grad=grad)
    v = torch.randn(B, KV, seq, D, device=device, dtype=dtype, requires_grad=grad)
    g = torch.randn(B, H, seq, D, device=device, dtype=dtype)
    bm = block_mask(policy, doc, lang)
    dense = dense_mask(policy, doc, lang)

    def run(fn):
        for t in (q, k, v):
            t.grad = None
        y = fn()
        if not grad:
            return y.float(), []
        y.backward(g)
        return y.detach().float(), [t.grad.float() for t in (q, k, v)]

    def timed(fn, n=5):
        run(fn)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            run(fn)
        sync(device)
        return (time.perf_counter() - t0) / n

    f_flex = lambda: flex(q, k, v, block_mask=bm, enable_gqa=True)  # noqa: E731
    f_sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(  # noqa: E731
        q, k, v, attn_mask=dense, enable_gqa=True)
    y1, g1 = run(f_flex)
    y2, g2 = run(f_sdpa)
    res = {
        "fwd_max_abs_diff": float((y1 - y2).abs().max()),
        "bwd_max_abs_diff": max((float((a - b).abs().max()) for a, b in zip(g1, g2)), default=0.0),
        "block_mask_sparsity_pct": float(bm.sparsity()),
        "flex_fwd_bwd_ms": 1e3 * timed(f_flex), "sdpa_dense_fwd_bwd_ms": 1e3 * timed(f_sdpa),
    }
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    res["ok"] = res["fwd_max_abs_diff"] < tol and res["bwd_max_abs_diff"] < 5 * tol
    return res


def check_flex(device: torch.device, seq: int, dtype: torch.dtype, compiled: bool = True) -> dict:
    from torch.nn.attention.flex_attention import flex_attention

    torch.manual_seed(0)
    flex = torch.compile(flex_attention, dynamic=False) if compiled else flex_attention
    out = {}
    grad = device.type == "cuda"  # FlexAttention has no CPU backward (the smoke run checks forward only)
    for policy in ("document", "xlda"):
        out[policy] = _flex_vs_sdpa(flex, policy, device, seq, dtype, grad)
    out["ok"] = all(v["ok"] for v in out.values() if isinstance(v, dict))
    return out


def model_config(args):
    from kollm.model.config import get_preset

    if args.smoke_cpu:
        return get_preset("tiny-sandwich-mtp")
    return get_preset("trillion-7b", n_layers=args.layers, max_seq_len=args.seq)


def check_train(device: torch.device, args, compile_: bool, ac: bool | str = False) -> dict:
    from kollm.model.transformer import build_model
    from kollm.train.config import config_from_dict
    from kollm.train.flops import H100_BF16_DENSE, default_peak_flops, mfu
    from kollm.train.memory import memory_plan
    from kollm.train.objectives.lm import LMObjective
    from kollm.train.parallel import DistInfo, compile_stats
    from kollm.train.trainer import Trainer

    mc = model_config(args)
    cfg = config_from_dict({
        "output_dir": args.workdir, "batch": {"tokens": args.batch * args.seq}, "optimizer": {"lr": 1e-4},
        "schedule": {"warmup_steps": 1}, "logging": {"progress": False},
        "checkpoint": {"every": 0, "export_hf": False},
        "parallel": {"mixed_precision": "bf16", "compile": compile_, "activation_checkpointing": ac},
        "phases": [{"name": "p", "steps": args.steps + 2, "mtp_alpha": 0.1,
                    "data": {"seq_len": args.seq, "batch_size": args.batch}}]})
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t = Trainer(cfg, build_model(mc, device=device), LMObjective("xlda", mtp_alpha=0.1),
                RandomDocs(mc.vocab_size, args.seq), DistInfo(device=device))
    t.apply_phase(0)
    t0 = time.perf_counter()
    first = t.train_step()
    sync(device)
    first_s = time.perf_counter() - t0
    t.train_step()
    sync(device)
    times, losses = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        m = t.train_step()
        sync(device)
        times.append(time.perf_counter() - t0)
        losses.append(m["loss"])
    times.sort()
    step_s = times[len(times) // 2]
    tok_s = args.batch * args.seq / step_s
    peak = default_peak_flops(device) or H100_BF16_DENSE
    plan = memory_plan(mc, "single", 1, args.batch, args.seq, "bf16", ac or True)
    res = {"layers": mc.n_layers, "params": mc.num_params(), "micro_batch": args.batch, "seq": args.seq,
           "first_step_s": first_s, "median_step_s": step_s, "tokens_per_s": tok_s,
           "mfu": mfu(tok_s, mc.flops_per_token(args.seq), peak), "peak_flops": peak,
           "first_loss": first["loss"], "last_loss": losses[-1],
           # XLDA mask over RandomDocs: the share of the matrix masked, and of 128-tiles FlexAttention skips
           "attn_sparsity": m["attn_sparsity"], "attn_block_sparsity": m["attn_block_sparsity"],
           "activation_checkpointing": ac, "planned_memory_gb": plan.total(ac) / 1e9}
    if device.type == "cuda":
        res["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    if compile_:
        res |= compile_stats()
    del t
    return res


def check_loss(device: torch.device, args) -> dict:
    """Dense against chunked LM head + cross entropy, forward + backward, bf16 autocast over an fp32
    head weight (the trainer's single/ddp layout): peak memory above the inputs, tokens/s."""
    import torch.nn.functional as F

    from kollm.train.memory import loss_fixed_bytes
    from kollm.train.objectives.chunked import linear_cross_entropy

    mc = model_config(args)
    t, v, d = args.loss_tokens, mc.vocab_size, mc.dim
    torch.manual_seed(0)
    h = (torch.randn(t, d, device=device) * 0.5).requires_grad_()
    w = (torch.randn(v, d, device=device) * 0.02).requires_grad_()
    tgt = torch.randint(0, v, (t,), device=device)
    planned = t * (4 * d + 8) + loss_fixed_bytes(dataclasses.replace(mc, mtp=False), t, 2, 4)
    res = {"tokens": t, "vocab": v, "dim": d, "planned_chunked_gb": planned / 1e9}
    for path in ("chunked", "dense"):
        h.grad = w.grad = None
        try:
            sync(device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                base = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, torch.bfloat16):
                if path == "dense":
                    loss = F.cross_entropy(F.linear(h, w).float(), tgt, reduction="sum")
                else:
                    loss = linear_cross_entropy(h, w, tgt)[0]
                loss.backward()
            sync(device)
            dt = time.perf_counter() - t0
            res[path] = {"loss": float(loss), "tokens_per_s": t / dt}
            if device.type == "cuda":  # above the inputs; the gradients' buffers (h, w) included
                res[path]["peak_memory_gb"] = (torch.cuda.max_memory_allocated(device) - base) / 1e9
            del loss
        except torch.OutOfMemoryError as e:
            res[path] = {"error": f"out of memory: {e}"[:300]}
    c, dn = res.get("chunked", {}), res.get("dense", {})
    if "loss" in c and "loss" in dn:
        res["rel_loss_diff"] = abs(c["loss"] - dn["loss"]) / abs(dn["loss"])
        res["chunked_over_dense_speed"] = c["tokens_per_s"] / dn["tokens_per_s"]
    res["ok"] = "loss" in c and res.get("rel_loss_diff", 0.0) < 1e-3
    return res


def check_decode(device: torch.device, args) -> dict:
    from kollm.model.generate import GenerationConfig, generate
    from kollm.model.transformer import build_model

    mc = model_config(args)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build_model(mc, device=device, dtype=dtype).eval()
    prompt = [torch.randint(0, mc.vocab_size, (args.prompt,)).tolist()]
    n = args.new_tokens
    res, outs = {"batch": 1, "prompt": args.prompt, "dtype": str(dtype)}, {}
    # eager, then the compiled static-cache step (CUDA graphs on CUDA); the first compiled call, with
    # the timed call's shapes, compiles and records: its time is reported apart
    for name, compile_ in (("eager", False), ("compiled", True)):
        cfg = GenerationConfig(max_new_tokens=n, compile=compile_)
        sync(device)
        t0 = time.perf_counter()
        generate(model, prompt, cfg)  # warm-up (compile, CUDA graph recording)
        sync(device)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = generate(model, prompt, cfg)
        sync(device)
        dt = time.perf_counter() - t0
        res[name] = {"new_tokens": len(out[0]), "tokens_per_s": len(out[0]) / dt}
        outs[name] = out
        if compile_:
            res[name]["compile_s"] = first - dt
    res["tokens_per_s"] = res["compiled"]["tokens_per_s"]
    res["compiled_tokens_equal_eager"] = outs["compiled"] == outs["eager"]  # bf16: a late flip is rounding
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--layers", type=int, default=4, help="trillion-7b blocks kept (of 32)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per training run (after 2 untimed)")
    ap.add_argument("--loss-tokens", type=int, default=32768, help="tokens of the chunked-loss check")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--workdir", default="/tmp/kollm-gpu-check")
    ap.add_argument("--smoke-cpu", action="store_true", help="no GPU: run every part on CPU at tiny sizes")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    summary: dict = {"cuda": cuda, "torch": torch.__version__}
    if not cuda and not args.smoke_cpu:
        summary["skipped"] = "no CUDA device: nothing measured (run again where torch.cuda.is_available())"
        print(f"gpu_check: {summary['skipped']}", file=sys.stderr)
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
        return 0
    if args.smoke_cpu:  # minutes of inductor on a small CPU: capture-only backend, eager flex
        os.environ.setdefault("KOLLM_COMPILE_BACKEND", "aot_eager")
        args.seq, args.batch, args.steps, args.prompt, args.new_tokens, args.loss_tokens = 64, 2, 2, 8, 8, 256
    device = torch.device("cuda", 0) if cuda and not args.smoke_cpu else torch.device("cpu")
    if device.type == "cuda":
        summary["device"] = torch.cuda.get_device_name(device)
        summary["device_memory_gb"] = torch.cuda.get_device_properties(device).total_memory / 1e9
    parts = {
        "flex_vs_sdpa": lambda: check_flex(device, 128 if args.smoke_cpu else 2048,
                                           torch.float32 if device.type == "cpu" else torch.bfloat16,
                                           compiled=not args.smoke_cpu),
        "train_eager": lambda: check_train(device, args, compile_=False),
        "train_compiled": lambda: check_train(device, args, compile_=True),
        "train_ckpt": lambda: check_train(device, args, compile_=False, ac=True),
        "loss_chunked_vs_dense": lambda: check_loss(device, args),
        "decode": lambda: check_decode(device, args),
    }
    for name, fn in parts.items():
        t0 = time.perf_counter()
        try:
            summary[name] = fn()
        except Exception as e:  # one failing part must not hide the others' numbers
            summary[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        summary[name]["wall_s"] = time.perf_counter() - t0
        print(f"gpu_check: {name}: {json.dumps({k: v for k, v in summary[name].items() if k != 'traceback'})}",
              file=sys.stderr, flush=True)
    te, tc = summary.get("train_eager", {}), summary.get("train_compiled", {})
    if "tokens_per_s" in te and "tokens_per_s" in tc:
        summary["compiled_over_eager"] = tc["tokens_per_s"] / te["tokens_per_s"]
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=1)
    failed = [k for k, v in summary.items() if isinstance(v, dict) and v.get("ok") is False]
    print(f"gpu_check: summary in {args.out}; failed parts: {failed or 'none'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
