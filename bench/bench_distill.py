"""Distillation step time: an online teacher (forward pass every step, kollm.train.distill with
`teacher.model`) against stored teacher top-k log-probs (`kollm distill precompute`,
`teacher.stored`), on the one Trainer with the same student, batches and loss (skew KL, α 0.1).

Student: preset `tiny` widened to dim 128, 4 layers; teacher: preset `small-20m` (~19M), both with
vocabulary 8192. Batches are prompt (IGNORE) + response token rows (half the positions are
response targets). The stored side gets exactly the top-k of the same teacher on the same batches,
computed before timing (what precompute writes). Sides alternate over rounds in one process so
machine noise hits both; the step time is the median of the timed steps. The online side's
teacher forward is what the stored side saves; the stored side pays the gather of k ids and the
tail logsumexp instead.

    .venv/bin/python bench/bench_distill.py [--batch 8 --seq 256 --top-k 64 --steps 5 --rounds 3 --device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from kollm.model import build_model, get_preset
from kollm.train.config import config_from_dict
from kollm.train.objectives.distill import DistillObjective, teacher_topk
from kollm.train.objectives.lm import IGNORE
from kollm.train.trainer import Trainer


class FixedBatches:
    """The trainer's data-source protocol over a fixed list of batches, cycled."""

    def __init__(self, batches: list[dict]):
        self.batches, self.i = batches, 0

    def next_batch(self, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b

    def set_phase(self, phase) -> None:
        pass

    def state_dict(self) -> dict:
        return {"i": self.i}

    def load_state_dict(self, state: dict) -> None:
        self.i = state["i"]


def make_batches(n: int, batch: int, seq: int, vocab: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (batch, seq), generator=g)
        labels = ids.clone()
        labels[:, : seq // 2] = IGNORE  # the prompt half
        out.append({"input_ids": ids, "labels": labels})
    return out


@torch.no_grad()
def with_topk(batches: list[dict], teacher, k: int, device) -> list[dict]:
    out = []
    for b in batches:
        logits = teacher(b["input_ids"].to(device)).logits
        # top-k at every position; the objective gathers the target positions, as from precompute's rows
        ids, logp, tail = teacher_topk(logits, k)
        out.append(b | {"teacher_ids": ids.cpu(), "teacher_logp": logp.cpu(), "teacher_tail": tail.cpu()})
    return out


def run_side(student_state, vocab, teacher, batches, args, device) -> list[float]:
    torch.manual_seed(0)
    student = build_model(get_preset("tiny", vocab_size=vocab, dim=128, n_layers=4, ffn_dim=352))
    student.load_state_dict(student_state)
    with tempfile.TemporaryDirectory() as out:
        cfg = config_from_dict({
            "output_dir": out, "batch": {"tokens": args.batch * args.seq},
            "optimizer": {"lr": 1e-4, "weight_decay": 0.0}, "schedule": {"warmup_steps": 0},
            "logging": {"progress": False}, "checkpoint": {"export_hf": False},
            "phases": [{"name": "bench", "steps": args.warmup + args.steps,
                        "data": {"seq_len": args.seq, "batch_size": args.batch}}]})
        trainer = Trainer(cfg, student, DistillObjective(teacher, "skl", 0.1), FixedBatches(batches))
        trainer.save = lambda: None
        times = []
        trainer._open_sinks()
        while trainer.step < trainer.total_steps:
            if trainer.phase_idx != 0:
                trainer.apply_phase(0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            trainer.train_step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        for s in trainer._sinks:
            s.close()
    return times[args.warmup:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--teacher", default="small-20m", help="teacher preset (vocabulary 8192)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    vocab = 8192
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    teacher = build_model(get_preset(args.teacher, vocab_size=vocab), device=device, dtype=dtype).eval()
    teacher.requires_grad_(False)
    student_state = build_model(get_preset("tiny", vocab_size=vocab, dim=128, n_layers=4, ffn_dim=352)).state_dict()
    plain = make_batches(4, args.batch, args.seq, vocab)
    stored = with_topk(plain, teacher, args.top_k, device)
    times: dict[str, list[float]] = {"online": [], "stored": []}
    for _ in range(args.rounds):
        times["online"] += run_side(student_state, vocab, teacher, plain, args, device)
        times["stored"] += run_side(student_state, vocab, None, stored, args, device)
    on, st = statistics.median(times["online"]), statistics.median(times["stored"])
    t_params = sum(p.numel() for p in teacher.parameters()) / 1e6
    print(f"student tiny dim128x4 ({vocab} vocab), teacher {args.teacher} ({t_params:.1f}M), batch {args.batch} x "
          f"seq {args.seq}, {device.type}, top-k {args.top_k}, {args.rounds} rounds x {args.steps} timed steps")
    print(f"  online teacher      {on * 1e3:9.1f} ms/step")
    print(f"  stored top-k        {st * 1e3:9.1f} ms/step")
    print(f"  ratio online / stored: {on / st:.2f}x step time")
    per_token = args.top_k * (4 + 4) + 4  # int32 ids + float32 log-probs + float32 tail
    print(f"  stored bytes per response token: {per_token} (k = {args.top_k}; full fp32 logits: {vocab * 4})")
    for side in times:
        print(f"  {side} steps (ms): {', '.join(f'{t * 1e3:.1f}' for t in times[side])}")


if __name__ == "__main__":
    main()
