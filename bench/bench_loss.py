"""The LM head + loss, dense against chunked (kollm.train.objectives.chunked): peak memory and time.

    python bench/bench_loss.py [--tokens 8192] [--vocab 128256] [--dim 256] [--only dense|chunked]

Each path runs in its own process (a clean peak RSS): forward + backward of the summed cross
entropy of `h @ W.T` (fp32, CPU). The loss's share is the peak RSS above the process's RSS once
the inputs (h, W and their gradients' buffers) exist. The dense side needs about
3 × tokens × vocab × 4 bytes (12.6 GB at the defaults): run it once, under nice, on an idle box.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run(path: str, tokens: int, vocab: int, dim: int) -> dict:
    import torch
    import torch.nn.functional as F

    from kollm.train.objectives.chunked import chunk_rows, linear_cross_entropy

    torch.manual_seed(0)
    h = (torch.randn(tokens, dim) * 0.5).requires_grad_()
    w = (torch.randn(vocab, dim) * 0.05).requires_grad_()
    tgt = torch.randint(0, vocab, (tokens,))
    h.grad, w.grad = torch.zeros_like(h), torch.zeros_like(w)  # the gradients' buffers exist before
    base = rss_mb()
    t0 = time.perf_counter()
    if path == "dense":
        loss = F.cross_entropy(F.linear(h, w).float(), tgt, reduction="sum")
    else:
        loss = linear_cross_entropy(h, w, tgt)[0]
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"path": path, "tokens": tokens, "vocab": vocab, "dim": dim, "loss": float(loss),
            "chunk_tokens": chunk_rows(vocab) if path == "chunked" else tokens,
            "loss_peak_mb": round(peak - base, 1), "forward_s": round(t1 - t0, 2), "backward_s": round(t2 - t1, 2),
            "total_s": round(t2 - t0, 2), "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--only", choices=("dense", "chunked"))
    a = ap.parse_args()
    if a.only:
        print(json.dumps(run(a.only, a.tokens, a.vocab, a.dim)))
        return
    rows = []
    for path in ("chunked", "dense"):
        out = subprocess.run([sys.executable, __file__, "--only", path, "--tokens", str(a.tokens),
                              "--vocab", str(a.vocab), "--dim", str(a.dim)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    c, d = rows
    print(f"loss share: dense {d['loss_peak_mb']:.0f} MB, chunked {c['loss_peak_mb']:.0f} MB "
          f"({d['loss_peak_mb'] / max(c['loss_peak_mb'], 1):.1f}x smaller); time dense {d['total_s']} s, chunked "
          f"{c['total_s']} s ({d['total_s'] / c['total_s']:.2f}x dense speed); |Δloss|/loss "
          f"{abs(c['loss'] - d['loss']) / abs(d['loss']):.1e}")


if __name__ == "__main__":
    main()
