"""Greedy decoding tokens/s of kollm.model.generate against transformers' `generate`, and the
peak memory and time of loading the same checkpoint with kollm.model.hf.load_hf against
`AutoModelForCausalLM.from_pretrained`.

kollm runs eager (static KV cache) and, at the batch sizes of --compiled-batch, with the compiled
decode step (static cache + torch.compile; inductor on CPU unless KOLLM_COMPILE_BACKEND says
otherwise). The compile happens in an untimed first call whose time is reported on its own
(`compile_s`: that call's time minus a steady call's).

One checkpoint (preset `small-20m` by default, random weights, exported with save_hf) is read by
both; rounds alternate so machine noise hits both. CPU, fp32, no stop token (every row runs the
full --new tokens). Loading is measured in fresh subprocesses (peak RSS from getrusage).

    .venv/bin/python bench/bench_generate.py [--preset small-20m --batch 1 8 --prompt 64 --new 128 --threads 1
                                              --compiled-batch 1 --no-load --step-breakdown]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from kollm.model import build_model, get_preset
from kollm.model.generate import GenerationConfig, compile_settings, generate
from kollm.model.hf import load_hf, save_hf

# Linux: writing 5 to clear_refs resets the peak-RSS counter (VmHWM) after the imports, so the
# peak read afterwards is what loading needed. Weights must be touched to count mmap'd pages.
_LOAD = """
import sys, time, torch
from kollm.model.hf import load_hf
from transformers import AutoModelForCausalLM
def kib(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1])
rss0 = kib("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")
t = time.perf_counter()
m = load_hf(sys.argv[2]) if sys.argv[1] == "kollm" else AutoModelForCausalLM.from_pretrained(sys.argv[2])
checksum = sum(float(p.float().sum()) for p in m.parameters())
print(time.perf_counter() - t, kib("VmHWM:") - rss0, kib("VmRSS:") - rss0)
"""


def load_stats(who: str, path: Path) -> tuple[float, float, float]:
    """Seconds, peak and final RSS growth (MiB) of loading a checkpoint in a fresh process."""
    out = subprocess.run([sys.executable, "-c", _LOAD, who, str(path)], capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[-3]), int(out[-2]) / 1024, int(out[-1]) / 1024


def step_breakdown(model, rounds: int = 15, reps: int = 10) -> dict:
    """ms per one-token step at batch 1 (cache of 192 columns, 100 filled), min over rounds:
    the eager step, the compiled step (what `generate(compile=True)` runs), the model's GEMVs
    through MKL alone (every Linear once on a random vector, as eager PyTorch and transformers run
    them) and one read of every weight (`sum`: the memory traffic, the floor any fp32 step pays)."""
    import torch.nn.functional as F

    from kollm.model.generate import decode_step
    from kollm.model.transformer import StaticKVCache

    cpu = torch.device("cpu")
    cache = StaticKVCache(model.config, 1, 192, cpu, torch.float32)
    cache.index = torch.tensor([100])
    valid = torch.zeros(1, 192, dtype=torch.bool)
    valid[:, :101] = True
    tok, pos = torch.tensor([5]), torch.tensor([100])
    linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    xs = {n: torch.randn(1, n) for n in {w.shape[1] for w in linears}}
    fns = {"eager_step_ms": decode_step(cpu, False), "compiled_step_ms": decode_step(cpu, True),
           "mkl_gemvs_ms": lambda *a: [F.linear(xs[w.shape[1]], w) for w in linears],
           "weights_read_ms": lambda *a: [w.sum() for w in linears]}
    best = dict.fromkeys(fns, float("inf"))
    with torch.no_grad():
        for f in fns.values():
            f(model, tok, pos, valid, cache)  # warm (compiled: already compiled by the run above)
        for _ in range(rounds):
            for name, f in fns.items():
                t = time.perf_counter()
                for _ in range(reps):
                    f(model, tok, pos, valid, cache)
                best[name] = min(best[name], (time.perf_counter() - t) / reps * 1e3)
    return {k: round(v, 2) for k, v in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small-20m")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="1: a loaded 2-core box makes 2-thread SDPA erratic")
    ap.add_argument("--compiled-batch", type=int, nargs="*", default=[1], help="batch sizes to also run compiled")
    ap.add_argument("--no-load", action="store_true", help="skip the checkpoint-loading comparison")
    ap.add_argument("--step-breakdown", action="store_true", help="also time one decode step: eager, compiled, "
                    "MKL's GEMVs alone and one read of the weights")
    ap.add_argument("--load-layers", type=int, default=64, help="layers of the preset for the load test (~400 MB)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = get_preset(args.preset)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_hf(build_model(cfg), Path(tmp) / "ckpt")
        ours, theirs = load_hf(path), AutoModelForCausalLM.from_pretrained(path).eval()
        results = {"preset": args.preset, "params": ours.num_params(), "threads": args.threads}
        g = torch.Generator().manual_seed(1)
        for B in args.batch:
            # Ragged prompts (left padding) in a batch; lengths prompt/2 .. prompt.
            lens = torch.linspace(args.prompt // 2, args.prompt, B).long().tolist() if B > 1 else [args.prompt]
            prompts = [torch.randint(3, cfg.vocab_size, (n,), generator=g).tolist() for n in lens]
            L = max(lens)
            ids = torch.zeros(B, L, dtype=torch.long)
            mask = torch.zeros(B, L, dtype=torch.long)
            for i, p in enumerate(prompts):
                ids[i, L - len(p):], mask[i, L - len(p):] = torch.tensor(p), 1
            gcfg = GenerationConfig(max_new_tokens=args.new)
            ccfg = GenerationConfig(max_new_tokens=args.new, compile=True)
            compiled = B in args.compiled_batch
            if compiled:
                t = time.perf_counter()
                generate(ours, prompts, ccfg)  # compiles the decode step
                first = time.perf_counter() - t
            t_k, t_c, t_h = [], [], []
            for _ in range(args.rounds):
                t = time.perf_counter()
                out_k = generate(ours, prompts, gcfg)
                t_k.append(time.perf_counter() - t)
                if compiled:
                    t = time.perf_counter()
                    out_c = generate(ours, prompts, ccfg)
                    t_c.append(time.perf_counter() - t)
                t = time.perf_counter()
                with torch.no_grad():
                    out_h = theirs.generate(ids, attention_mask=mask, max_new_tokens=args.new, min_new_tokens=args.new,
                                            do_sample=False, eos_token_id=None, pad_token_id=0)
                t_h.append(time.perf_counter() - t)
            hf_rows = out_h[:, L:].tolist()
            k, h = B * args.new / min(t_k), B * args.new / min(t_h)
            row = {"kollm_tok_s": round(k, 1), "hf_tok_s": round(h, 1), "ratio": round(k / h, 2),
                   "rows_identical": f"{sum(a == b for a, b in zip(out_k, hf_rows))}/{B}"}
            if compiled:
                c = B * args.new / min(t_c)
                row |= {"compiled_tok_s": round(c, 1), "compiled_ratio": round(c / h, 2),
                        "compiled_rows_identical": f"{sum(a == b for a, b in zip(out_c, hf_rows))}/{B}",
                        "compile_s": round(first - min(t_c), 1), "backend": compile_settings(torch.device("cpu"))[0]}
            results[f"batch{B}"] = row
        if args.step_breakdown:
            results["step_breakdown"] = step_breakdown(ours)
        if args.no_load:
            print(json.dumps(results, indent=2))
            return
        big = save_hf(build_model(cfg.replace(n_layers=args.load_layers)), Path(tmp) / "big")
        results["load_checkpoint_mib"] = round(sum(f.stat().st_size for f in big.glob("*.safetensors")) / 2**20)
        for who in ("kollm", "hf"):
            secs, peak, final = load_stats(who, big)
            results[f"load_{who}"] = {"seconds": round(secs, 2), "peak_rss_growth_mib": round(peak),
                                      "final_rss_growth_mib": round(final)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
