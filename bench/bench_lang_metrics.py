"""Overhead of per-language training metrics (`loss_<lang>`, `mix_<lang>`, `xlingual_seqs`):
kollm's Trainer step on `small-20m` (CPU, fp32) with LMObjective(langs=[en, ko]) against the same
objective without languages, same weights and batches, interleaved step by step so machine noise
hits both. Reports the median step time of each and their ratio.

    .venv/bin/python bench/bench_lang_metrics.py [--batch 8 --seq 512 --steps 8 --threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import RandomTokens  # noqa: E402


class TwoLanguages(RandomTokens):
    """bench_train's random-token source, in documents of 64 tokens alternating two language ids."""

    def next_batch(self, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        batch = super().next_batch(batch_size)
        docs = (torch.arange(self.seq) // 64).expand(batch_size, -1).contiguous()
        return batch | {"doc_ids": docs, "lang_ids": docs % 2}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from kollm.model import build_model, get_preset
    from kollm.train.config import config_from_dict
    from kollm.train.objectives.lm import LMObjective
    from kollm.train.trainer import Trainer

    trainers = {}
    with tempfile.TemporaryDirectory() as out:
        for name, langs in (("without", ()), ("with", ("en", "ko"))):
            torch.manual_seed(0)
            model = build_model(get_preset("small-20m"))
            cfg = config_from_dict({
                "output_dir": f"{out}/{name}", "batch": {"tokens": args.batch * args.seq},
                "schedule": {"warmup_steps": 0}, "logging": {"progress": False}, "checkpoint": {"export_hf": False},
                "phases": [{"name": "p", "steps": args.steps + 2,
                            "data": {"seq_len": args.seq, "batch_size": args.batch}}]})
            t = Trainer(cfg, model, LMObjective("document", langs=langs), TwoLanguages(model.config.vocab_size, args.seq))
            t.apply_phase(0)
            trainers[name] = t
        times: dict[str, list[float]] = {k: [] for k in trainers}
        for i in range(args.steps + 2):
            for name, t in trainers.items():
                t0 = time.perf_counter()
                t.train_step()
                if i >= 2:  # warm-up steps
                    times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"step time without languages {med['without'] * 1e3:.1f} ms, with {med['with'] * 1e3:.1f} ms, "
          f"ratio {med['with'] / med['without']:.3f} (batch {args.batch} x {args.seq}, small-20m, "
          f"{args.threads} threads, median of {args.steps} interleaved steps)")


if __name__ == "__main__":
    main()
