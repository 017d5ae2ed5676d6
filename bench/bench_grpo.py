"""GRPO throughput, kollm vs TRL GRPOTrainer, on the same tiny model, prompts and settings.

One step = sample G completions for each of P prompts with the current policy, score them, one
optimizer update on them (μ = 1, β = 0, loss_type grpo). Both run on CPU in this process, one after
the other, from the same Hugging Face checkpoint (a random tiny Llama) and prompt rows; samples/s =
P·G / seconds per step, averaged over the steps after the first (warm-up).

    PYTHONPATH=src python bench/bench_grpo.py [--steps 6] [--prompts 8] [--group 8] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from grpo_demo import char_tokenizer  # noqa: E402


def make_model(out: Path, hidden: int, layers: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer(out)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


def digit_reward(completion: str, row: dict) -> float:
    return float(sum(c.isdigit() for c in completion)) / max(len(completion), 1)


def trl_digit_reward(completions, **kw):
    return [digit_reward(c, {}) for c in completions]


def run_kollm(model_dir: Path, prompts: Path, work: Path, a) -> float:
    from kollm.train.grpo import main as grpo_main

    cfg = {"name": "bench", "output_dir": str(work / "kollm"), "model": {"init_from": str(model_dir)},
           "data": {"train": str(prompts), "max_prompt_len": 8, "chat_template": False},
           "grpo": {"group_size": a.group, "prompts_per_step": a.prompts, "iterations": 1, "max_new_tokens": a.new_tokens,
                    "micro_batch_size": a.prompts * a.group, "beta": 0.0, "loss_type": "grpo",
                    "rewards": [{"name": f"{__name__}.digit_reward"}]},
           "optimizer": {"lr": 1e-5, "weight_decay": 0.0},
           "schedule": {"kind": "linear", "warmup_steps": 0, "final_lr_ratio": 1.0},
           "phases": [{"name": "rl", "steps": a.steps}],
           "checkpoint": {"export_hf": False}, "logging": {"progress": False}}
    import yaml

    (work / "kollm.yaml").write_text(yaml.safe_dump(cfg))
    assert grpo_main([str(work / "kollm.yaml")]) == 0
    rows = [json.loads(line) for line in (work / "kollm" / "metrics.jsonl").open()]
    times = [r["time"] for r in rows]
    return (times[-1] - times[0]) / (len(times) - 1)


def run_trl(model_dir: Path, prompts: Path, work: Path, a) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    rows = [json.loads(line) for line in prompts.open()]
    ds = Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    args = GRPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=a.prompts * a.group,
                      num_generations=a.group, max_completion_length=a.new_tokens, learning_rate=1e-5,
                      max_steps=a.steps, num_iterations=1, beta=0.0, loss_type="grpo", temperature=1.0,
                      use_cpu=True, bf16=False, report_to=[], save_strategy="no", logging_steps=1000,
                      gradient_accumulation_steps=1, dataloader_num_workers=0, seed=0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=trl_digit_reward, args=args, train_dataset=ds,
                          processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[Clock()])
    trainer.train()
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    a = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = make_model(work / "model", a.hidden, a.layers)
        prompts = work / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"{i % 10}+{i // 10}="}) + "\n" for i in range(100)))
        k = run_kollm(model_dir, prompts, work, a)
        t = run_trl(model_dir, prompts, work, a)
    n = a.prompts * a.group
    print(f"model: Llama hidden {a.hidden}, {a.layers} layers; {a.prompts} prompts x G={a.group}, "
          f"{a.new_tokens} new tokens, {a.steps} steps (first excluded)")
    print(f"kollm: {k:.2f} s/step, {n / k:.1f} samples/s")
    print(f"TRL GRPOTrainer: {t:.2f} s/step, {n / t:.1f} samples/s")
    print(f"ratio kollm/TRL: {t / k:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
