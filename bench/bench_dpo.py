"""DPO step time: kollm with stored reference log-probs against kollm keeping the reference model
in memory (goal ≤ 0.6×), and kollm against TRL's DPOTrainer (precompute_ref_log_probs=True) on
the same model, rows and batch (goal ≥ 1.5× steps/s). CPU, fp32.

The model is a random Llama-layout decoder written once as a Hugging Face directory (TRL loads it
as LlamaForCausalLM, kollm as its own CausalLM); the rows are the first pairs of a preference
file (e.g. scripts/kor_math_pairs.py's train.jsonl). Every side trains one epoch over the same
rows with the same global batch, micro-batch and max_length, in its own subprocess; the reference
pass is timed separately (it is paid once per data set). Step time is the mean over the steps
after the first; sides alternate over rounds so machine noise hits each.

    python bench/bench_dpo.py --tokenizer /tmp/demo-dpo/hf-100 --pairs /tmp/dpo-pairs/train.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def make_model(tokenizer_dir: str, out: Path, dim: int, layers: int) -> Path:
    from kollm.model.config import ModelConfig
    from kollm.model.hf import save_hf
    from kollm.model.transformer import build_model
    from kollm.train.model_setup import tokenizer_fields

    fields = tokenizer_fields(tokenizer_dir)
    cfg = ModelConfig(vocab_size=fields["vocab_size"], dim=dim, n_layers=layers, n_heads=max(1, dim // 64),
                      n_kv_heads=max(1, dim // 128), ffn_dim=int(dim * 8 / 3) // 16 * 16, max_seq_len=1024,
                      bos_token_id=fields.get("bos_token_id"), eos_token_id=fields.get("eos_token_id"))
    torch.manual_seed(0)
    return save_hf(build_model(cfg), out, tokenizer=tokenizer_dir, dtype=torch.float32)


def run_kollm(a, reference: str) -> dict:
    from kollm.train.dpo import DPOSection, OnlineSection, train_dpo
    from kollm.train.parallel import DistInfo

    dpo = DPOSection(beta=0.1, epochs=1, pairs_per_step=a.pairs_per_step, micro_batch=a.micro_batch,
                     max_length=a.max_length, ref_batch=a.micro_batch * 2, reference=reference,
                     online=OnlineSection())
    out = Path(a.workdir) / f"kollm-{reference}-{time.time_ns()}"
    raw = {"name": "bench", "output_dir": str(out), "model": {"init_from": a.model}, "data": {},
           "optimizer": {"lr": 1e-6, "weight_decay": 0.0}, "schedule": {"kind": "cosine", "warmup_steps": 0},
           "checkpoint": {"export_hf": False, "keep": 1}, "logging": {"progress": False}}
    t0 = time.perf_counter()
    trainer = train_dpo(raw, dpo, a.rows_file, None, DistInfo(), resume=False, run_dir=out)
    total = time.perf_counter() - t0
    step_tokens = a.pairs_per_step * a.max_length  # the trainer's per-step token count for a pair batch
    times = [step_tokens / r["tokens_per_s"] for r in trainer.history]
    return {"step_s": times, "total_s": total, "peak_mem_mb": trainer.history[-1]["peak_mem_mb"]}


def run_trl(a) -> dict:
    import datasets
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from kollm.data.chat import load_tokenizer

    rows = [json.loads(x) for x in Path(a.rows_file).read_text().splitlines()]
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows]
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    cfg = DPOConfig(output_dir=str(Path(a.workdir) / "trl"), beta=0.1, learning_rate=1e-6, weight_decay=0.0,
                    per_device_train_batch_size=a.micro_batch,
                    gradient_accumulation_steps=a.pairs_per_step // a.micro_batch, max_length=a.max_length,
                    num_train_epochs=1, precompute_ref_log_probs=True, precompute_ref_batch_size=a.micro_batch * 2,
                    lr_scheduler_type="cosine", warmup_steps=0, logging_steps=10_000, save_strategy="no",
                    report_to="none", use_cpu=True, bf16=False, dataloader_num_workers=0, max_grad_norm=1.0,
                    adam_beta2=0.95, disable_tqdm=True)
    t0 = time.perf_counter()
    trainer = DPOTrainer(model=a.model, args=cfg, processing_class=load_tokenizer(a.model),
                         train_dataset=datasets.Dataset.from_list(rows), callbacks=[Timer()])
    trainer.train()
    import resource

    return {"step_s": times, "total_s": time.perf_counter() - t0,
            "peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def worker(a) -> None:
    torch.set_num_threads(a.threads)
    res = run_trl(a) if a.side == "trl" else run_kollm(a, "precomputed" if a.side == "kollm-stored" else "model")
    print("RESULT " + json.dumps(res))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (e.g. the demo's export)")
    p.add_argument("--pairs", required=True, help="preference file (TRL rows)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--pairs-per-step", type=int, default=16)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sides", default="kollm-stored,kollm-model,trl")
    p.add_argument("--side", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--rows-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.side:
        return worker(a)
    work = Path(tempfile.mkdtemp(prefix="bench_dpo-"))
    model = make_model(a.tokenizer, work / "model", a.dim, a.layers)
    lines = Path(a.pairs).read_text(encoding="utf-8").splitlines()[: a.pairs_per_step * a.steps]
    rows_file = work / "rows.jsonl"
    rows_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    results: dict[str, list[dict]] = {s: [] for s in a.sides.split(",")}
    for _ in range(a.rounds):
        for side in results:
            cmd = [sys.executable, __file__, "--side", side, "--model", str(model), "--rows-file", str(rows_file),
                   "--workdir", str(work), "--tokenizer", a.tokenizer, "--pairs", a.pairs,
                   "--pairs-per-step", str(a.pairs_per_step), "--micro-batch", str(a.micro_batch),
                   "--max-length", str(a.max_length), "--threads", str(a.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{side} failed:\n{out.stderr[-3000:]}")
            results[side].append(json.loads(line[7:]))
    summary = {}
    for side, runs in results.items():
        steps = [t for r in runs for t in r["step_s"][1:]]
        summary[side] = {"step_s": statistics.mean(steps), "steps": len(steps),
                         "peak_mem_mb": max(r["peak_mem_mb"] for r in runs),
                         "total_s": statistics.mean(r["total_s"] for r in runs)}
    print(json.dumps({"config": {k: v for k, v in vars(a).items() if v is not None and k != "side"},
                      **summary}, indent=1))
    s = summary
    if "kollm-stored" in s and "kollm-model" in s:
        print(f"stored reference log-probs / reference model in memory, step time: "
              f"{s['kollm-stored']['step_s'] / s['kollm-model']['step_s']:.2f}x (goal <= 0.6x)")
    if "kollm-stored" in s and "trl" in s:
        print(f"kollm / TRL DPOTrainer steps/s: {s['trl']['step_s'] / s['kollm-stored']['step_s']:.2f}x "
              "(goal >= 1.5x)")


if __name__ == "__main__":
    main()
