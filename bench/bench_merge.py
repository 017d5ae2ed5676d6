"""Merge wall time and peak memory: `kollm merge` against the I/O floor and against mergekit.

Two synthetic Llama-shaped bf16 checkpoints (default d 1024, FFN 2816, 8 layers, vocab 32,000:
170M parameters, 340 MB each, in 200 MB shards) are merged with the DNA-style SLERP schedule, a
uniform linear soup and TIES. Each run is its own process (fresh interpreter, imports done before
the clock starts); the inputs sit in the page cache after a warm-up read, so the numbers are
CPU-bound merges, not disk. Compared, in the same script run:

- io-floor: kollm's own reader reading every input tensor a merge reads + its writer writing the
  output's bytes (same shards), no arithmetic — the cost of moving the bytes (goal: merge ≤ 1.2×);
- raw-io: plain 64 MB `read()`s of every input file and `write()`s of the output's size;
- mergekit: `mergekit-yaml CONFIG OUT` (mergekit 0.1.5, defaults, CPU) on the same YAML (goal ≥ 2×).
Reported: wall seconds and CPU seconds (user + sys, all threads) of the measured part, the whole
process's wall time (interpreter start and imports included: what `time mergekit-yaml ...` shows),
and peak RSS (VmHWM; the interpreter with torch imported is reported alone too). On a shared
machine CPU seconds are the steadier measure.

    .venv/bin/python bench/bench_merge.py [--layers 8] [--dim 1024] [--rounds 2] [--methods slerp,linear,ties]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUNNER = r'''
import json, os, resource, sys, time
kind, cfg, out = sys.argv[1], sys.argv[2], sys.argv[3]
import torch  # noqa: F401  (imports before the clock)
torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
def start():
    global r0
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter()
if kind == "kollm":
    from kollm.merge.cli import main
    t0 = start(); main([cfg, "--out", out, "--quiet"])  # the `kollm merge` command
elif kind == "mergekit":
    from mergekit.scripts.run_yaml import main
    sys.argv = ["mergekit-yaml", cfg, out, "--quiet", "--no-copy-tokenizer"]
    t0 = start()
    try:
        main()
    except SystemExit as e:
        assert not e.code, e.code
elif kind == "io":
    from kollm.merge.config import parse_config
    from kollm.merge.io import Checkpoint, SafetensorsWriter
    from kollm.merge.plan import Planner
    from kollm.model.hf import parse_size
    t0 = start()
    c = parse_config(cfg); cks = {m: Checkpoint(m) for m in c.referenced_models()}
    plans = Planner(c, cks).plan()
    os.makedirs(out)
    w = SafetensorsWriter(out, [(p.out, p.shape, p.dtype) for p in plans], parse_size("5GB"))
    for p in plans:
        ts = [cks[m].get(n) for m, n in p.inputs]
        w.write(p.out, ts[0])
    w.close()
elif kind == "raw":
    files = json.loads(cfg)
    t0 = start()
    for f in files["read"]:
        with open(f, "rb") as fh:
            while fh.read(64 << 20):
                pass
    os.makedirs(out)
    left, chunk = files["write"], bytes(64 << 20)
    with open(os.path.join(out, "blob"), "wb") as fh:
        while left > 0:
            fh.write(chunk[:min(left, len(chunk))]); left -= len(chunk)
else:
    t0 = start()
dt = time.perf_counter() - t0
r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
# VmHWM, not ru_maxrss: the latter is inherited across fork+exec from the (large) parent.
hwm = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps({"seconds": dt, "cpu_seconds": cpu, "max_rss_mb": hwm}))
'''


def make_model(d: Path, seed: int, dim: int, ffn: int, layers: int, vocab: int) -> None:
    import torch

    from kollm.merge.io import SafetensorsWriter

    d.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    kv = dim // 4
    shapes = {"model.embed_tokens.weight": (vocab, dim)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (dim,), p + "self_attn.q_proj.weight": (dim, dim),
                   p + "self_attn.k_proj.weight": (kv, dim), p + "self_attn.v_proj.weight": (kv, dim),
                   p + "self_attn.o_proj.weight": (dim, dim), p + "post_attention_layernorm.weight": (dim,),
                   p + "mlp.gate_proj.weight": (ffn, dim), p + "mlp.up_proj.weight": (ffn, dim),
                   p + "mlp.down_proj.weight": (dim, ffn)}
    shapes |= {"model.norm.weight": (dim,), "lm_head.weight": (vocab, dim)}
    w = SafetensorsWriter(d, [(n, s, torch.bfloat16) for n, s in shapes.items()], 200 * 10**6)
    for n, s in shapes.items():
        w.write(n, (torch.randn(s, generator=g) * 0.02).bfloat16())
    w.close()
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": dim,
           "intermediate_size": ffn, "num_hidden_layers": layers, "num_attention_heads": dim // 64,
           "num_key_value_heads": kv // 64, "head_dim": 64, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096,
           "tie_word_embeddings": False, "hidden_act": "silu", "dtype": "bfloat16"}
    (d / "config.json").write_text(json.dumps(cfg))


def configs(a: str, b: str, layers: int) -> dict[str, dict]:
    return {
        "slerp": {"merge_method": "slerp", "base_model": a, "dtype": "bfloat16",
                  "slices": [{"sources": [{"model": a, "layer_range": [0, layers]},
                                          {"model": b, "layer_range": [0, layers]}]}],
                  "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                                       {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]}, {"value": 0.5}]}},
        "linear": {"merge_method": "linear", "dtype": "bfloat16",
                   "models": [{"model": a, "parameters": {"weight": 1.0}}, {"model": b, "parameters": {"weight": 1.0}}]},
        "ties": {"merge_method": "ties", "base_model": a, "dtype": "bfloat16",
                 "models": [{"model": b, "parameters": {"weight": 1.0, "density": 0.5}}]},
    }


def run(kind: str, cfg: str, out: Path, threads: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "BENCH_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", RUNNER, kind, cfg, str(out)], capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(f"{kind} failed:\n{res.stderr[-3000:]}")
    r = json.loads(res.stdout.strip().splitlines()[-1])
    r["process_seconds"] = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--ffn", type=int, default=2816)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both tools")
    ap.add_argument("--methods", default="slerp,linear,ties")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_merge_"))
    a, b = work / "a", work / "b"
    if not a.exists():
        make_model(a, 1, args.dim, args.ffn, args.layers, args.vocab)
        make_model(b, 2, args.dim, args.ffn, args.layers, args.vocab)
    in_files = sorted(str(f) for d in (a, b) for f in d.glob("*.safetensors"))
    in_bytes = sum(os.path.getsize(f) for f in in_files)
    out_bytes = sum(os.path.getsize(f) for f in a.glob("*.safetensors"))
    raw = json.dumps({"read": in_files, "write": out_bytes})
    print(f"inputs: 2 × {out_bytes / 1e6:.0f} MB bf16 ({args.layers} layers, d {args.dim}, vocab {args.vocab}); "
          f"threads {args.threads}; {os.cpu_count()} CPUs", flush=True)
    print(json.dumps({"interpreter+torch": run("none", "", work / "o", args.threads)}), flush=True)
    rows = []
    for method in args.methods.split(","):
        cfg_path = work / f"{method}.yaml"
        import yaml

        cfg_path.write_text(yaml.safe_dump(configs(str(a), str(b), args.layers)[method], sort_keys=False))
        best: dict[str, dict] = {}
        for _ in range(args.rounds):  # alternate, so machine noise hits every side
            for kind, c in (("raw", raw), ("io", str(cfg_path)), ("kollm", str(cfg_path)), ("mergekit", str(cfg_path))):
                r = run(kind, c, work / "o", args.threads)
                print(json.dumps({"method": method, "kind": kind, **r}), flush=True)
                if kind not in best or r["seconds"] < best[kind]["seconds"]:
                    best[kind] = r
        rows.append((method, best))
    print("\n| method | kollm s (CPU s) | io-floor s (CPU s) | raw-io s | mergekit s (CPU s) | **kollm / io-floor** "
          "wall (CPU) | **mergekit / kollm** wall (CPU) | whole command mergekit / kollm | peak RSS kollm / mergekit (MB) |"
          "\n|---|---|---|---|---|---|---|---|---|")
    for method, best in rows:
        k, io, rw, mk = (best[x] for x in ("kollm", "io", "raw", "mergekit"))
        print(f"| {method} | {k['seconds']:.2f} ({k['cpu_seconds']:.2f}) | {io['seconds']:.2f} ({io['cpu_seconds']:.2f}) | "
              f"{rw['seconds']:.2f} | {mk['seconds']:.2f} ({mk['cpu_seconds']:.2f}) | "
              f"**{k['seconds'] / io['seconds']:.2f}×** ({k['cpu_seconds'] / io['cpu_seconds']:.2f}×) | "
              f"**{mk['seconds'] / k['seconds']:.2f}×** ({mk['cpu_seconds'] / k['cpu_seconds']:.2f}×) | "
              f"{mk['process_seconds'] / k['process_seconds']:.2f}× | {k['max_rss_mb']:.0f} / {mk['max_rss_mb']:.0f} |")
    print(f"(inputs read {in_bytes / 1e6:.0f} MB, output {out_bytes / 1e6:.0f} MB; best of {args.rounds} rounds)")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
