"""The GRPO must-show run on CPU: a tiny policy's mean reward on held-out prompts rises.

Task: single-digit addition written as text ("3+4=" → "7"), scored by kollm's math reward (the
last number must equal the answer). A tiny kollm model (char tokenizer, `tiny` preset) is first
warmed up for a few LM steps through the same trainer (LM objective) on "a+b=c" lines of which 60 %
go on after the answer ("3+4=7 3"): like a base model that keeps talking, its greedy completion
usually ends in a wrong number even when its sum is right. Then `kollm grpo recipes/tiny-grpo.yaml`
trains on 80 of the 100 prompts; the other 20 are held out and scored greedily before and after.
What GRPO can learn here is to end with the answer (and to add better); a rise on the held-out
prompts needs it to generalise beyond the prompts it was trained on.

    PYTHONPATH=src python bench/grpo_demo.py --workdir /tmp/grpo-demo
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def char_tokenizer(out: Path):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<|begin_of_text|>", "<|end_of_text|>", *"0123456789+= "])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    tok.decoder = decoders.Fuse()  # characters back to text without the spaces WordLevel would insert
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                                   pad_token="<pad>")
    fast.save_pretrained(out)
    return fast


class FactLoader:
    """LM batches of "a+b=c<eos>" lines (right-padded, −100 labels on padding); with probability
    `trailing` the line goes on after the answer (" a": the first operand again) before <eos>."""

    def __init__(self, tokenizer, facts: list[tuple[int, int]], trailing: float, seed: int = 0):
        self.tok, self.facts, self.trailing, self.rng = tokenizer, facts, trailing, random.Random(seed)

    def line(self) -> str:
        a, b = self.rng.choice(self.facts)
        return f"{a}+{b}={a + b}" + (f" {a}" if self.rng.random() < self.trailing else "")

    def set_phase(self, phase) -> None:
        self.seq_len = phase.seq_len

    def next_batch(self, batch_size=None):
        rows = [self.tok(self.line())["input_ids"] + [self.tok.eos_token_id]
                for _ in range(batch_size or 16)]
        ids = torch.zeros(len(rows), self.seq_len, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            labels[i, :len(r)] = torch.tensor(r)
        return {"input_ids": ids, "labels": labels}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def warm_up(workdir: Path, steps: int, trailing: float) -> Path:
    from kollm.model.config import get_preset
    from kollm.model.hf import save_hf
    from kollm.model.transformer import build_model
    from kollm.train.config import config_from_dict
    from kollm.train.objectives.lm import LMObjective
    from kollm.train.trainer import Trainer

    tok_dir = workdir / "tokenizer"
    tok = char_tokenizer(tok_dir)
    torch.manual_seed(0)
    model = build_model(get_preset("tiny").replace(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                                   eos_token_id=tok.eos_token_id, tie_embeddings=True))
    facts = [(a, b) for a in range(10) for b in range(10)]
    cfg = config_from_dict({"name": "warmup", "output_dir": str(workdir / "warmup"), "batch": {"tokens": 32 * 12},
                            "optimizer": {"lr": 3e-3, "weight_decay": 0.0},
                            "schedule": {"kind": "cosine", "warmup_steps": 10},
                            "phases": [{"name": "lm", "steps": steps, "data": {"seq_len": 12, "batch_size": 32}}],
                            "data": {"mask_policy": "causal"}, "logging": {"progress": False}})
    Trainer(cfg, model, LMObjective("causal"), FactLoader(tok, facts, trailing)).fit()
    return save_hf(model, workdir / "init", tokenizer=tok_dir)


def held_out_reward(model_dir: Path, rows_path: Path) -> float:
    from transformers import AutoTokenizer

    from kollm.data.chat import stop_token_ids
    from kollm.model.hf import load_hf
    from kollm.rl.rewards import Rewards
    from kollm.train.grpo_config import GRPOData
    from kollm.train.grpo_data import PromptSet, mean_reward

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    prompts = PromptSet(rows_path, tok, GRPOData(max_prompt_len=16, chat_template=False), {"answer"})
    model = load_hf(model_dir, dtype=torch.float32)
    return mean_reward(model, tok, prompts, Rewards([{"name": "math"}]), 4, stop_token_ids(tok, model_dir))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/grpo-demo")
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--trailing", type=float, default=0.6, help="warm-up lines that go on after the answer")
    p.add_argument("--init", default=None, help="reuse a warmed-up model directory (skips the warm-up)")
    p.add_argument("--set", action="append", default=[], help="extra --set for kollm grpo")
    args = p.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(10) for b in range(10)]
    random.Random(0).shuffle(rows)
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:80]))
    (work / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[80:]))
    t0 = time.time()
    init = Path(args.init) if args.init else warm_up(work, args.warmup_steps, args.trailing)
    before = held_out_reward(init, work / "heldout.jsonl")
    print(f"warm-up done in {time.time() - t0:.0f} s; held-out mean reward before GRPO: {before:.3f}", flush=True)
    from kollm.train.grpo import main as grpo

    t1 = time.time()
    rc = grpo([str(ROOT / "recipes" / "tiny-grpo.yaml"), "--set", f"model.init_from={init}",
               "--set", f"data.train={work / 'train.jsonl'}", "--set", f"data.validation={work / 'heldout.jsonl'}",
               "--set", f"output_dir={work / 'grpo'}", *[a for s in args.set for a in ("--set", s)]])
    if rc:
        return rc
    after = held_out_reward(work / "grpo" / "hf" / "latest", work / "heldout.jsonl")
    rows = [json.loads(line) for line in (work / "grpo" / "metrics.jsonl").open()]
    rewards = [r["reward_mean"] for r in rows]
    print(f"GRPO done in {time.time() - t1:.0f} s; train reward_mean (sampled, T=1) first/last 5 steps: "
          f"{sum(rewards[:5]) / 5:.3f} -> {sum(rewards[-5:]) / 5:.3f}")
    print("val_reward_mean by step:", {r["step"]: round(r["val_reward_mean"], 3) for r in rows if "val_reward_mean" in r})
    print(f"held-out (20 prompts, greedy) mean reward: before {before:.3f} -> after {after:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
