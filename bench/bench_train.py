"""Training tokens/s and peak memory: kollm's Trainer, eager and with `parallel.compile: true`
(inductor, every block compiled: the real Trainer step), against a plain AdamW loop on
transformers' LlamaForCausalLM. CPU, fp32, preset `small-20m` (~19M parameters), sequence 512.
A fourth side, `floor`, times the step's GEMMs and attention kernels alone: the bound on the
tokens/s of any fp32 implementation on this machine (see floor_side).

Both sides get the same config, the same initial weights and the same batches, and do the same
work per step: forward, token-mean cross entropy, backward, clip to 1.0, AdamW (0.9, 0.95), wd 0.1.
Each side runs in its own subprocess (peak RSS is per process), sides alternate over rounds so that
machine noise hits both; tokens/s is the median over the timed steps of all rounds. tokens per
CPU-second (the process's CPU time per step) is printed beside it: on a machine shared with other
jobs, time spent descheduled does not count there, so it is the steadier comparison. The compiled
side's compile time is reported apart: its warm-up steps' time less as many timed (median) steps;
the first round's is the cold one (later rounds may hit inductor's on-disk cache).

    .venv/bin/python bench/bench_train.py [--batch 8 --seq 512 --steps 5 --warmup 2 --rounds 2 --threads 2]
                                          [--sides kollm,compiled,hf,floor]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F


class RandomTokens:
    """The trainer's data-source protocol over a fixed stream of random token batches."""

    def __init__(self, vocab: int, seq: int, seed: int = 0):
        self.gen, self.vocab, self.seq = torch.Generator().manual_seed(seed), vocab, seq

    def next_batch(self, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, self.vocab, (batch_size, self.seq), generator=self.gen)
        zeros = torch.zeros_like(ids)
        return {"input_ids": ids, "labels": ids.clone(), "doc_ids": zeros, "lang_ids": zeros}

    def set_phase(self, phase) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def kollm_side(args, compiled: bool = False) -> dict:
    from kollm.model import build_model, get_preset
    from kollm.train.config import config_from_dict
    from kollm.train.objectives.lm import LMObjective
    from kollm.train.trainer import Trainer

    torch.manual_seed(0)
    model = build_model(get_preset("small-20m"))
    with tempfile.TemporaryDirectory() as out:
        cfg = config_from_dict({
            "output_dir": out, "batch": {"tokens": args.batch * args.seq},
            "optimizer": {"lr": 3e-4, "weight_decay": 0.1, "grad_clip": 1.0},
            "schedule": {"warmup_steps": 0}, "logging": {"progress": False},
            "checkpoint": {"export_hf": False}, "parallel": {"compile": compiled},
            "phases": [{"name": "bench", "steps": args.warmup + args.steps,
                        "data": {"seq_len": args.seq, "batch_size": args.batch}}]})
        trainer = Trainer(cfg, model, LMObjective("causal"), RandomTokens(model.config.vocab_size, args.seq))
        trainer.save = lambda: None  # timing only: no checkpoint at the end
        cpu, step = [], trainer.train_step

        def timed_step() -> dict:
            c0 = time.process_time()
            m = step()
            cpu.append(time.process_time() - c0)
            return m

        trainer.train_step = timed_step
        history = trainer.fit()
    rates = [h["tokens_per_s"] for h in history[args.warmup:]]
    tokens = args.batch * args.seq
    warm_s = sum(tokens / h["tokens_per_s"] for h in history[:args.warmup])
    return {"rates": rates, "cpu_rates": [tokens / c for c in cpu[args.warmup:]],
            "compile_s": max(0.0, warm_s - args.warmup * tokens / statistics.median(rates))}


def hf_side(args) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from kollm.model import build_model, get_preset

    torch.manual_seed(0)
    ref = build_model(get_preset("small-20m"))  # the same initial weights as the kollm side
    c = ref.config
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.ffn_dim, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, rms_norm_eps=c.norm_eps,
        rope_theta=c.rope_theta, max_position_embeddings=c.max_seq_len, attn_implementation="sdpa"))
    hf.load_state_dict(ref.state_dict(), strict=True)
    del ref
    hf.train()
    opt = torch.optim.AdamW(hf.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    data = RandomTokens(c.vocab_size, args.seq)
    rates, cpu_rates = [], []
    for step in range(args.warmup + args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        ids = data.next_batch(args.batch)["input_ids"]
        logits = hf(input_ids=ids).logits
        F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= args.warmup:
            rates.append(args.batch * args.seq / (time.perf_counter() - t0))
            cpu_rates.append(args.batch * args.seq / (time.process_time() - c0))
    return {"rates": rates, "cpu_rates": cpu_rates, "compile_s": 0.0}


def floor_side(args) -> dict:
    """The step's unavoidable kernels alone, as a bound on any fp32 implementation of it: every
    Linear's three GEMMs (forward, input gradient, weight gradient) through MKL at the step's shapes,
    and causal attention forward and backward through PyTorch's CPU flash kernel (the SDPA both
    other sides call), per layer. No norms, RoPE, SwiGLU, loss or optimizer: a step can only be
    slower than this, so tokens / floor is the most any implementation could reach."""
    from kollm.model import build_model, get_preset

    model = build_model(get_preset("small-20m"))
    c, T = model.config, args.batch * args.seq
    shapes = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    mats = {(o, i): (torch.randn(T, i), torch.randn(o, i), torch.randn(T, o)) for o, i in set(shapes)}
    hd = c.dim // c.n_heads
    q = torch.randn(args.batch, c.n_heads, args.seq, hd, requires_grad=True)
    kv = [torch.randn(args.batch, c.n_kv_heads, args.seq, hd, requires_grad=True) for _ in range(2)]

    def gemms() -> None:
        for o, i in shapes:
            x, w, dy = mats[(o, i)]
            x @ w.t(), dy @ w, dy.t() @ x

    def attention() -> None:
        for _ in range(c.n_layers):
            F.scaled_dot_product_attention(q, *kv, is_causal=True, enable_gqa=True).sum().backward()

    rates = []
    for _ in range(args.warmup + args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        gemms()
        t1 = time.perf_counter()
        attention()
        t2 = time.perf_counter()
        rates.append((T / (t2 - t0), t1 - t0, t2 - t1, T / (time.process_time() - c0)))
    rates = rates[args.warmup:]
    return {"rates": [r[0] for r in rates], "cpu_rates": [r[3] for r in rates], "compile_s": 0.0,
            "gemm_s": min(r[1] for r in rates), "attention_s": min(r[2] for r in rates),
            "gemm_gflops": 6 * sum(o * i for o, i in shapes) * T / min(r[1] for r in rates) / 1e9}


LABELS = {"kollm": "kollm Trainer (eager)", "compiled": "kollm Trainer, compiled", "hf": "transformers + AdamW",
          "floor": "GEMMs + attention alone"}
SIDES = {"hf": hf_side, "floor": floor_side}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sides", default="kollm,compiled,hf,floor", help="comma-separated: kollm, compiled, hf, floor")
    ap.add_argument("--side", choices=list(LABELS), help=argparse.SUPPRESS)  # child process
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.side:
        res = SIDES[args.side](args) if args.side in SIDES else kollm_side(args, compiled=args.side == "compiled")
        print(json.dumps(res | {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    sides = args.sides.split(",")
    results: dict[str, dict] = {s: {"rates": [], "cpu_rates": [], "peak": [], "compile": []} for s in sides}
    for _ in range(args.rounds):
        for side in sides:
            cmd = [sys.executable, __file__, "--side", side] + [
                f"--{k}={getattr(args, k)}" for k in ("batch", "seq", "steps", "warmup", "threads")]
            out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            results[side]["rates"] += out["rates"]
            results[side]["cpu_rates"] += out["cpu_rates"]
            results[side]["peak"].append(out["peak_rss_mb"])
            results[side]["compile"].append(out["compile_s"])
            if side == "floor":
                results[side]["parts"] = out
    rate = {s: statistics.median(results[s]["rates"]) for s in sides}
    cpu = {s: statistics.median(results[s]["cpu_rates"]) for s in sides}
    peak = {s: max(results[s]["peak"]) for s in sides}
    print(f"small-20m, batch {args.batch} x seq {args.seq}, fp32 CPU, {args.threads} threads, "
          f"{args.rounds} rounds x {args.steps} timed steps")
    for s in sides:
        extra = f"   compile {', '.join(f'{c:.0f}' for c in results[s]['compile'])} s" if s == "compiled" else ""
        print(f"  {LABELS[s]:<26} {rate[s]:10,.0f} tokens/s {cpu[s]:8,.0f} tokens/CPU-s   "
              f"peak RSS {peak[s]:8,.0f} MB{extra}")
    if "hf" in sides:
        for s in sides:
            if s not in ("hf", "floor"):
                print(f"  ratio {s} / transformers: {rate[s] / rate['hf']:.2f}x tokens/s, "
                      f"{cpu[s] / cpu['hf']:.2f}x tokens/CPU-s, {peak[s] / peak['hf']:.2f}x peak RSS")
    if "kollm" in sides and "compiled" in sides:
        print(f"  ratio compiled / eager kollm: {rate['compiled'] / rate['kollm']:.2f}x tokens/s, "
              f"{cpu['compiled'] / cpu['kollm']:.2f}x tokens/CPU-s")
    if "floor" in sides:
        f = results["floor"]["parts"]
        print(f"  floor: GEMMs {f['gemm_s']:.2f} s ({f['gemm_gflops']:.0f} GFLOP/s), attention "
              f"{f['attention_s']:.2f} s a step; no implementation of this step in fp32 passes "
              f"{rate['floor']:,.0f} tokens/s" + (f" = {rate['floor'] / rate['hf']:.2f}x transformers" if "hf" in sides else ""))
    for s in sides:  # the spread: a shared machine makes single steps noisy
        print(f"  {s} steps (tokens/s): {', '.join(f'{r:,.0f}' for r in results[s]['rates'])}")


if __name__ == "__main__":
    main()
