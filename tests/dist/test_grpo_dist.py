"""`torchrun --nproc_per_node 2 -m kollm.cli grpo` (gloo, CPU) under fsdp with a real `kollm serve
--allow-weight-updates` for rollouts and validation: the full state dict is gathered from both
ranks' shards for every sync, so what the server loads (OUTPUT_DIR/rollout-weights, last written
for the validation after step 2) equals the run's final export bit for bit, and the server's greedy
tokens and logprobs and the logged val_reward_mean are the exported policy's in process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kollm.model.hf import load_hf
from kollm.serve.testing import running_server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))

from test_grpo_sync import in_process, same, served  # noqa: E402

pytestmark = [pytest.mark.slow]


def test_fsdp_grpo_syncs_the_gathered_policy(tmp_path, write_tiny_llama):
    texts = [f"{a}+{b}={a + b}" for a in range(10) for b in range(10)] * 3
    tiny = write_tiny_llama(tmp_path / "m", texts, ["<pad>", "<s>", "</s>"], 96, 32, 128, 0.5)
    prompts = tmp_path / "train.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n"
                               for a in range(10) for b in range(3)))
    out = tmp_path / "run"
    with running_server(tiny, "--allow-weight-updates", "--weights-root", str(tmp_path), "--seed", "0") as server:
        cfg = {"name": "fsdp-sync", "output_dir": str(out), "seed": 0, "model": {"init_from": str(tiny)},
               "data": {"train": str(prompts), "validation": str(prompts), "val_size": 8, "max_prompt_len": 16,
                        "chat_template": False},
               "validation": {"every": 0},
               "grpo": {"group_size": 4, "prompts_per_step": 2, "max_new_tokens": 6, "micro_batch_size": 4,
                        "rewards": [{"name": "format", "kwargs": {"pattern": "[a-zA-Z]"}}],
                        "server": server.url, "server_model": server.model},
               "optimizer": {"lr": 1e-2, "weight_decay": 0.0},
               "schedule": {"kind": "linear", "warmup_steps": 0, "final_lr_ratio": 1.0},
               "phases": [{"name": "rl", "steps": 2}], "parallel": {"mode": "fsdp"},
               "checkpoint": {"every": 0, "export_dtype": "float32"}, "logging": {"progress": False}}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2"]
        p = subprocess.run([*torchrun, "-m", "kollm.cli", "grpo", str(tmp_path / "c.yaml")], env=env,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-4000:]
        # syncs: before the rollouts of steps 1 and 2, before the validation after step 2; the end reuses it
        assert server.health()["weight_updates"] == 3
        final = load_hf(out / "hf" / "latest")
        torch.set_num_threads(1)
        assert same(served(server, key=None), in_process(final))
    gathered = load_file(out / "rollout-weights" / "model.safetensors")
    exported = load_file(out / "hf" / "latest" / "model.safetensors")
    assert gathered.keys() == exported.keys() and all(torch.equal(gathered[k], exported[k]) for k in gathered)
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["weight_sync_s"] > 0 for r in rows)
    from transformers import AutoTokenizer

    from kollm.rl.rewards import Rewards
    from kollm.data.chat import stop_token_ids
    from kollm.train.grpo_config import GRPOData
    from kollm.train.grpo_data import PromptSet, mean_reward

    tok = AutoTokenizer.from_pretrained(tiny)
    held = PromptSet(prompts, tok, GRPOData(max_prompt_len=16, chat_template=False), set(), limit=8)
    want = mean_reward(final, tok, held, Rewards(cfg["grpo"]["rewards"]), 6, stop_token_ids(tok, tiny))
    assert rows[1]["val_reward_mean"] == pytest.approx(want, abs=1e-6)
