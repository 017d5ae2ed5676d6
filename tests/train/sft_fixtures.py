"""Shared by the SFT tests (tests/train/test_sft*.py, tests/data/test_sft.py, tests/dist): a tiny
kollm model exported in Hugging Face layout with a kollm-trained bilingual byte-level BPE (Llama 3
special tokens), and chat rows in the three accepted formats."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TEXTS = {
    "en": [f"Tom has {a} apples and buys {b} more. How many apples does he have? The answer is {a + b}."
           for a in range(3, 40, 3) for b in range(2, 9, 3)],
    "ko": [f"민수는 사과 {a}개를 가지고 있고 {b}개를 더 샀습니다. 사과는 모두 몇 개입니까? 답은 {a + b}개입니다."
           for a in range(3, 40, 3) for b in range(2, 9, 3)],
}


def make_model_dir(out: Path, seed: int = 0, dim: int = 64) -> Path:
    """tiny preset sized to the tokenizer, random weights (seeded), saved with save_hf."""
    from kollm.model.config import get_preset
    from kollm.model.hf import save_hf
    from kollm.model.transformer import build_model
    from kollm.tokenizer.train import TokenizerConfig, save, train

    tok, summary, _ = train(TEXTS, TokenizerConfig(budgets={"en": 60, "ko": 60}))
    tok_dir = save(tok, out.parent / f"{out.name}-tokenizer", summary)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    torch.manual_seed(seed)
    model = build_model(get_preset("tiny", vocab_size=vocab, dim=dim, bos_token_id=tok.token_to_id("<|begin_of_text|>"),
                                   eos_token_id=tok.token_to_id("<|end_of_text|>")))
    return save_hf(model, out, tokenizer=tok_dir)


def math_rows(n: int, offset: int = 0) -> list[dict]:
    rows = []
    for i in range(offset, offset + n):
        a, b = 3 + i % 17, 2 + (i * 7) % 11
        if i % 3 == 0:
            rows.append({"messages": [
                {"role": "system", "content": "You are a careful math tutor."},
                {"role": "user", "content": f"Tom has {a} apples and buys {b} more. How many?"},
                {"role": "assistant", "content": f"{a} + {b} = {a + b}. The answer is {a + b}."},
                {"role": "user", "content": "And if he eats one?"},
                {"role": "assistant", "content": f"{a + b} - 1 = {a + b - 1}."}]})
        elif i % 3 == 1:
            rows.append({"prompt": f"민수는 사과 {a}개를 가지고 있고 {b}개를 더 샀습니다. 모두 몇 개입니까?",
                         "completion": f"{a} + {b} = {a + b}. 답은 {a + b}개입니다."})
        else:
            rows.append({"instruction": "Add the numbers.", "input": f"{a} and {b}", "output": f"{a + b}"})
    return rows


def write_jsonl(path: Path, rows: list, raw_lines: list[str] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def sft_config(model_dir: Path, train: Path, out: Path, steps: int = 6, seq_len: int = 128, batch_size: int = 4,
               validation: Path | None = None, packing: bool = True, every: int = 2, val_every: int = 0,
               mode: str = "single") -> dict:
    """A config dict for `kollm sft` on the tiny model (write it with yaml.safe_dump)."""
    cfg = {
        "name": "sft-test", "output_dir": str(out), "seed": 0,
        "model": {"init_from": str(model_dir)},
        "data": {"train": str(train), "validation": str(validation or ""), "mask_policy": "document",
                 "restart_positions": True, "pack_conversations": packing},
        "batch": {"tokens": seq_len * batch_size},
        "optimizer": {"lr": 3e-3, "weight_decay": 0.0, "grad_clip": 1.0},
        "schedule": {"kind": "linear", "warmup_steps": 2, "final_lr_ratio": 0.1},
        "phases": [{"name": "sft", "steps": steps, "data": {"seq_len": seq_len, "batch_size": batch_size}}],
        "parallel": {"mode": mode},
        "checkpoint": {"every": every, "keep": 2, "export_hf": True, "export_dtype": "float32"},
        "logging": {"progress": False},
    }
    if val_every:
        cfg["validation"] = {"every": val_every}
    return cfg
