"""SFT training throughput: kollm's trainer against TRL's SFTTrainer on the same tiny Llama-shaped
model, the same chat rows, the same packing (best-fit decreasing into rows of `seq_len`,
conversations isolated: kollm's document mask, TRL's padding-free position ids), the same loss
(assistant tokens only), AdamW at the same learning rate, one process, fp32 on CPU (bf16 autocast
on CUDA for kollm; TRL's `bf16=True`).

Tokens/s counts the real (non-pad) tokens of the batches each side trains on, after `--warmup`
steps; the ratio is measured in one run of this script.

    python bench/bench_sft.py --data ../shared/data/post-train/kor-math --steps 20
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_rows(data: str | None, n: int) -> list[dict]:
    if data and Path(data).is_dir():
        from sft_kor_math import build_rows

        return build_rows(Path(data), 0, 0)["train"][:n]
    rows = []
    for i in range(n):  # synthetic fallback: bilingual arithmetic dialogues of varied length
        a, b = 3 + i % 97, 2 + (i * 7) % 89
        reps = 1 + i % 5
        rows.append({"messages": [
            {"role": "user", "content": f"Tom has {a} apples and buys {b} more. How many? " * reps},
            {"role": "assistant", "content": f"{a} + {b} = {a + b}. 답은 {a + b}개입니다. " * reps}]})
    return rows


def make_model(work: Path, rows: list[dict], dim: int, layers: int) -> Path:
    from kollm.model.config import get_preset
    from kollm.model.hf import save_hf
    from kollm.model.transformer import build_model
    from kollm.tokenizer.train import TokenizerConfig, save, train

    texts = {"en": [m["content"] for r in rows[::2] for m in r["messages"]],
             "ko": [m["content"] for r in rows[1::2] for m in r["messages"]]}
    tok, summary, _ = train(texts, TokenizerConfig(budgets={"en": 400, "ko": 600}))
    tok_dir = save(tok, work / "tokenizer", summary)
    n_heads = max(2, dim // 64)
    cfg = get_preset("tiny", vocab_size=tok.get_vocab_size(with_added_tokens=True), dim=dim, n_layers=layers,
                     n_heads=n_heads, n_kv_heads=max(1, n_heads // 2), ffn_dim=int(dim * 8 / 3) // 16 * 16,
                     max_seq_len=4096, bos_token_id=tok.token_to_id("<|begin_of_text|>"),
                     eos_token_id=tok.token_to_id("<|end_of_text|>"), tie_embeddings=False)
    torch.manual_seed(0)
    return save_hf(build_model(cfg), work / "model", tokenizer=tok_dir)


class Clock:
    """Real tokens and wall time of the steps after `warmup`."""

    def __init__(self, warmup: int):
        self.warmup, self.step, self.tokens, self.t0, self.elapsed = warmup, 0, 0, None, 0.0

    def begin(self) -> None:
        if self.step >= self.warmup:
            self.t0 = time.perf_counter()

    def end(self, tokens: int) -> None:
        if self.t0 is not None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.elapsed += time.perf_counter() - self.t0
            self.tokens += tokens
            self.t0 = None
        self.step += 1

    @property
    def rate(self) -> float:
        return self.tokens / self.elapsed


def run_kollm(model_dir: Path, train: Path, work: Path, seq_len: int, batch: int, steps: int, lr: float,
              warmup: int) -> dict:
    from kollm.data import chat
    from kollm.data.sft import SFTData
    from kollm.model.hf import load_hf
    from kollm.train.config import config_from_dict
    from kollm.train.objectives.sft import SFTObjective
    from kollm.train.parallel import DistInfo
    from kollm.train.trainer import Trainer

    cfg = config_from_dict({
        "output_dir": str(work / "kollm"), "model": {"init_from": str(model_dir)},
        "data": {"train": str(train), "mask_policy": "document", "restart_positions": True},
        "batch": {"tokens": seq_len * batch}, "optimizer": {"lr": lr, "weight_decay": 0.0, "grad_clip": 1.0},
        "schedule": {"kind": "linear", "warmup_steps": 0, "final_lr_ratio": 1.0},
        "phases": [{"name": "sft", "steps": steps, "data": {"seq_len": seq_len, "batch_size": batch}}],
        "checkpoint": {"every": 0, "keep": 1, "export_hf": False}, "logging": {"progress": False}})
    info = DistInfo(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    tok = chat.load_tokenizer(model_dir)
    data = SFTData(str(train), tok, seed=0, packing=True)
    clock = Clock(warmup)
    draw = data.next_batch

    def next_batch(b=None):
        out = draw(b)
        clock.pending = int((out["doc_ids"] >= 0).sum())
        return out

    data.next_batch = next_batch
    trainer = Trainer(cfg, load_hf(model_dir, dtype=torch.float32), SFTObjective(), data, info)
    step = trainer.train_step

    def timed_step():
        clock.begin()
        m = step()
        clock.end(clock.pending)
        return m

    trainer.train_step = timed_step
    hist = trainer.fit()
    return {"tokens_per_s": clock.rate, "first_loss": hist[0]["loss"], "last_loss": hist[-1]["loss"],
            "steps": len(hist)}


def run_trl(model_dir: Path, train: Path, work: Path, seq_len: int, batch: int, steps: int, lr: float,
            warmup: int) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from kollm.data import chat

    rows = [{"messages": chat.to_messages(json.loads(x))} for x in train.read_text(encoding="utf-8").splitlines()]
    tok = chat.load_tokenizer(model_dir)
    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    clock = Clock(warmup)

    def count(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        clock.pending = int(ids.numel())  # padding-free: every token is real

    model.register_forward_pre_hook(count, with_kwargs=True)

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            clock.begin()

        def on_step_end(self, *a, **k):
            clock.end(clock.pending)

    args = SFTConfig(output_dir=str(work / "trl"), max_steps=steps, per_device_train_batch_size=batch,
                     gradient_accumulation_steps=1, learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0,
                     weight_decay=0.0, max_grad_norm=1.0, adam_beta2=0.95, packing=True, packing_strategy="bfd",
                     max_length=seq_len, assistant_only_loss=True, report_to=[], save_strategy="no",
                     logging_steps=1, bf16=cuda, use_cpu=not cuda, dataloader_num_workers=0, seed=0,
                     disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         callbacks=[Timer()])
    out = trainer.train()
    losses = [x["loss"] for x in trainer.state.log_history if "loss" in x]
    return {"tokens_per_s": clock.rate, "first_loss": losses[0], "last_loss": losses[-1],
            "steps": out.global_step}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="kor-math directory (default: synthetic chat rows)")
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4, help="packed rows per step")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = make_rows(args.data, args.rows)
        train = work / "train.jsonl"
        train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        model_dir = make_model(work, rows, args.dim, args.layers)
        common = (model_dir, train, work, args.seq_len, args.batch, args.steps, 1e-3, args.warmup)
        results = {"kollm": run_kollm(*common), "trl": run_trl(*common)}
    ratio = results["kollm"]["tokens_per_s"] / results["trl"]["tokens_per_s"]
    print(json.dumps({**results, "ratio": round(ratio, 3), "threads": torch.get_num_threads(),
                      "device": "cuda" if torch.cuda.is_available() else "cpu", **vars(args)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
