"""Packer tokens/s (XLDA packing + batch tensors) against the trainer it feeds.

The packer must never be the bottleneck: the target is ≥ 100× the tokens/s of a forward+backward
step of the `small-20m` preset (~19M parameters) on the same CPU, measured in the same process.
The corpus is synthetic shards (4 languages, log-normal document lengths, mean ≈ 600 tokens)
written to a temp dir through ShardWriter; reads go through the memmaps.

    .venv/bin/python bench/bench_packer.py [--tokens 20000000 --seq 512 4096 --threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kollm.data.loader import PhaseData, PretrainLoader
from kollm.data.shards import ShardWriter
from kollm.model import build_model, get_preset

SHARES = {"en": 0.85, "ko": 0.10, "ja": 0.03, "zh": 0.02}


def make_corpus(root: Path, tokens: int, vocab: int) -> None:
    rng = np.random.default_rng(0)
    for lang, share in SHARES.items():
        with ShardWriter(root / lang / "part-00000", lang, "bench") as w:
            left = int(tokens * share)
            while left > 0:
                n = min(left, max(1, int(rng.lognormal(6.0, 1.0))))
                w.add(rng.integers(0, vocab, n, dtype=np.uint32), float(rng.random()))
                left -= n


def packer_tps(root: Path, phase: PhaseData, seconds: float) -> float:
    loader = PretrainLoader(root, phase, seed=0)
    loader.next_batch()  # first block loads
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += loader.next_batch()["input_ids"].numel()
    return n / (time.perf_counter() - t0)


def trainer_tps(batch: int, seq: int, steps: int) -> float:
    model = build_model(get_preset("small-20m"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))

    def step():
        logits = model(ids).logits
        F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()
        opt.step()
        opt.zero_grad()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * ids.numel() / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=20_000_000)
    ap.add_argument("--seq", type=int, nargs="+", default=[512, 4096])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    trainer = trainer_tps(batch=8, seq=512, steps=2)
    print(f"trainer (small-20m, fwd+bwd+AdamW, 8x512, {args.threads} threads): {trainer:,.0f} tokens/s")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        make_corpus(Path(tmp), args.tokens, vocab=8192)
        print(f"corpus: {args.tokens:,} tokens in 4 languages, written in {time.perf_counter() - t0:.1f}s")
        beta = {"en": 0.6, "ko": 0.3, "ja": 0.05, "zh": 0.05}
        for seq in args.seq:
            for name, phase in [
                ("greedy rho=0", PhaseData(seq_len=seq, batch_size=8, alpha=0.5, beta=beta)),
                ("xlda rho=0.5", PhaseData(seq_len=seq, batch_size=8, alpha=0.5, beta=beta, rho=0.5)),
                ("xlda rho=0.5 + quality>=0.3", PhaseData(seq_len=seq, batch_size=8, alpha=0.5, beta=beta, rho=0.5,
                                                          quality_threshold=0.3)),
            ]:
                tps = packer_tps(Path(tmp), phase, args.seconds)
                print(f"packer seq {seq:>5} {name:<28} {tps:>14,.0f} tokens/s   {tps / trainer:>7.0f}x trainer")


if __name__ == "__main__":
    main()
