"""`kollm grpo` on a tiny Llama: config errors name their key, malformed prompt rows are counted
with file:line, μ iterations reuse one rollout batch (ratio 1 on the first pass), a run killed
mid-way (between the two iterations of a rollout batch) and resumed logs exactly the metrics of
the uninterrupted run and ends with the same weights, and the policy is exported to hf/latest."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kollm.train.grpo import grpo_config_from_dict, load_grpo_config
from kollm.train.grpo import main as grpo_main
from kollm.train.grpo_config import GRPOData
from kollm.train.grpo_data import PromptSet

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:torch.distributed is disabled")]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("prompts")
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(10) for b in range(3)]
    lines = [json.dumps(r) for r in rows] + ["{not json", json.dumps({"prompt": "1+1="}),
                                            json.dumps({"prompt": "9" * 40 + "=", "answer": "1"})]
    (d / "train.jsonl").write_text("\n".join(lines) + "\n")
    return d / "train.jsonl"


def config(tiny: Path, prompts: Path, out: Path, **grpo) -> dict:
    return {"name": "t", "output_dir": str(out), "seed": 0, "model": {"init_from": str(tiny)},
            "data": {"train": str(prompts), "validation": str(prompts), "val_size": 6, "max_prompt_len": 16,
                     "chat_template": False},
            "validation": {"every": 2},
            # a reward with variance on a random policy: the completion has an ASCII letter
            "grpo": {"group_size": 4, "prompts_per_step": 2, "iterations": 2, "max_new_tokens": 6,
                     "micro_batch_size": 3, "beta": 0.04,
                     "rewards": [{"name": "format", "kwargs": {"pattern": "[a-zA-Z]"}}, {"name": "math", "weight": 0.5}],
                     **grpo},
            "optimizer": {"lr": 1e-2, "weight_decay": 0.0},
            "schedule": {"kind": "linear", "warmup_steps": 0, "final_lr_ratio": 1.0},
            "phases": [{"name": "rl", "steps": 4}], "checkpoint": {"every": 1, "keep": 5, "export_dtype": "float32"},
            "logging": {"progress": False}}


def metrics(run: Path) -> list[dict]:
    keys = ("loss", "reward_mean", "reward_std", "kl", "clip_frac", "response_len", "grad_norm", "val_reward_mean")
    return [{k: r.get(k) for k in ("step", *keys)}
            for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def test_config_mistakes_name_their_key(tiny, prompts, tmp_path):
    raw = config(tiny, prompts, tmp_path / "x")
    with pytest.raises(KeyError, match="grpo.group_sise"):
        grpo_config_from_dict({**raw, "grpo": {"group_sise": 4}})
    with pytest.raises(ValueError, match="batch: set by grpo.prompts_per_step"):
        grpo_config_from_dict({**raw, "batch": {"tokens": 10}})
    with pytest.raises(ValueError, match=r"phases\[0\].data"):
        grpo_config_from_dict({**raw, "phases": [{"name": "rl", "steps": 2, "data": {"seq_len": 8}}]})
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        grpo_config_from_dict({**raw, "grpo": {"group_size": 1}})
    with pytest.raises(ValueError, match="multiple of the world size"):
        grpo_config_from_dict({**raw, "grpo": {"prompts_per_step": 3}}, world=2)
    with pytest.raises(ValueError, match="loss_type"):
        grpo_config_from_dict({**raw, "grpo": {"loss_type": "ppo"}})
    cfg = grpo_config_from_dict(raw)
    assert cfg.train.batch.tokens == 2 * 4 * (16 + 6) and (cfg.train.phases[0].data.seq_len, cfg.train.phases[0].data.batch_size) == (22, 3)
    for recipe in ("tiny-grpo.yaml", "trillion-7b-grpo.yaml"):  # the shipped recipes parse
        load_grpo_config(RECIPES / recipe)


@pytest.mark.parametrize("section, key, value, message", [
    ("grpo", "epsilon", 0.0, "grpo.epsilon must be a finite number > 0, got 0.0"),
    ("grpo", "epsilon_high", -0.1, "grpo.epsilon_high must be a finite number > 0"),
    ("grpo", "beta", -0.04, "grpo.beta must be >= 0 (0: no KL term), got -0.04"),
    ("grpo", "temperature", 0.0, "grpo.temperature must be a finite number > 0"),
    ("grpo", "top_p", 1.5, "grpo.top_p must be in (0, 1], got 1.5"),
    ("grpo", "top_k", -1, "grpo.top_k must be >= 0"),
    ("data", "val_size", 0, "data.val_size must be positive, got 0"),
    (None, "optimizer", {"lr": 0.0}, "optimizer.lr must be a finite number > 0, got 0.0"),
])
def test_values_out_of_range_name_their_key(section, key, value, message, tmp_path):
    raw = config(tmp_path / "policy", tmp_path / "prompts.jsonl", tmp_path / "out")  # nothing is read
    if section is None:
        raw[key] = value
    else:
        raw[section][key] = value
    with pytest.raises(ValueError, match=re.escape(message)):
        grpo_config_from_dict(raw)


def test_malformed_rows_are_counted_with_file_and_line(tiny, prompts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    ps = PromptSet(prompts, tok, GRPOData(max_prompt_len=16, chat_template=False), {"answer"})
    assert len(ps) == 30
    assert dict(ps.bad) == {"bad_json": 1, "no_answer": 1, "prompt_too_long": 1}
    assert f"{prompts}:31" in ps.summary() and f"{prompts}:33" in ps.summary()


def test_null_rows_and_unknown_roles_are_counted(tiny, tmp_path):
    # a `null` line was dropped uncounted and a message with an unknown role was trained on
    from kollm.data.chat import load_tokenizer

    f = tmp_path / "p.jsonl"
    rows = [{"prompt": [{"role": "user", "content": "1+2="}], "answer": "3"}, None,
            {"prompt": [{"role": "robot", "content": "1+2="}], "answer": "3"},
            {"prompt": [{"role": "user"}], "answer": "3"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ps = PromptSet(f, load_tokenizer(tiny), GRPOData(max_prompt_len=512, chat_template=True), {"answer"})
    assert len(ps) == 1 and ps.bad == {"not_an_object": 1, "unknown_role": 1, "bad_message": 1}
    assert f"{f}:2" in ps.summary() and f"{f}:3" in ps.summary()


def test_resume_mid_rollout_batch_is_exact_and_exports(tiny, prompts, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    for name, out in (("full", full), ("killed", killed)):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config(tiny, prompts, out)))
    assert grpo_main([str(tmp_path / "full.yaml")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KOLLM_FAULT_AT_STEP": "3"}
    r = subprocess.run([sys.executable, "-m", "kollm.cli", "grpo", str(tmp_path / "killed.yaml")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 17, r.stderr[-3000:]  # died after step 3: its rollout batch has one pass left
    state = json.loads((killed / "checkpoints" / "step-00000003" / "rank-0.json").read_text())["data"]
    assert state["iteration"] == 1 and state["buffer"] is not None
    assert grpo_main([str(tmp_path / "killed.yaml"), "--resume"]) == 0
    m_full, m_killed = metrics(full), metrics(killed)
    assert [m["step"] for m in m_full] == [1, 2, 3, 4]
    assert m_killed == m_full  # bit for bit, every metric of every step
    # μ = 2: the first pass over a rollout batch has π_θ = π_old (ratio 1, nothing clipped);
    # the second pass sees the updated policy; β > 0 puts the k3 KL in the loss
    assert m_full[0]["clip_frac"] == 0.0 and m_full[2]["clip_frac"] == 0.0
    assert m_full[0]["reward_mean"] == m_full[1]["reward_mean"] and m_full[2]["reward_mean"] == m_full[3]["reward_mean"]
    assert m_full[1]["kl"] > 0 and m_full[3]["kl"] > 0
    for r in map(json.loads, (full / "metrics.jsonl").read_text().splitlines()):  # each reward logged too
        assert r["reward_mean"] == pytest.approx(r["reward_format"] + 0.5 * r["reward_math"], abs=1e-6)
    # validation every 2 steps: the greedy mean reward of the held-out prompts under the policy of
    # that step; at the end it is the exported model's
    assert [m["val_reward_mean"] is not None for m in m_full] == [False, True, False, True]
    from transformers import AutoTokenizer

    from kollm.data.chat import stop_token_ids
    from kollm.model.hf import load_hf
    from kollm.rl.rewards import Rewards
    from kollm.train.grpo_data import mean_reward

    hf = full / "hf" / "latest"
    tok = AutoTokenizer.from_pretrained(hf)
    held = PromptSet(prompts, tok, GRPOData(max_prompt_len=16, chat_template=False), {"answer"}, limit=6)
    spec = config(tiny, prompts, full)["grpo"]["rewards"]
    assert mean_reward(load_hf(hf, dtype=torch.float32), tok, held, Rewards(spec), 6, stop_token_ids(tok, hf)) == \
        pytest.approx(m_full[3]["val_reward_mean"], abs=1e-6)
    from safetensors.torch import load_file

    a = load_file(full / "hf" / "latest" / "model.safetensors")
    b = load_file(killed / "hf" / "latest" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    init = load_file(tiny / "model.safetensors")
    assert any(not torch.equal(a[k], init[k]) for k in a if k in init)  # the policy moved
    assert (full / "hf" / "latest" / "tokenizer.json").is_file()


def test_bf16_reference_and_old_policy_match_the_policy_at_step_one(tiny, prompts, tmp_path):
    # Under parallel.mixed_precision bf16 the reference and old-policy passes run under the same
    # autocast as the policy's forward: at step 1 π_θ = π_old = π_ref, so the ratio is exactly 1
    # (nothing clipped) and the k3 KL exactly 0. An fp32 reference beside a bf16 policy gives KL > 0.
    cfg = config(tiny, prompts, tmp_path / "run")
    cfg["parallel"] = {"mixed_precision": "bf16"}
    cfg["phases"] = [{"name": "rl", "steps": 1}]
    cfg["validation"] = {"every": 0}
    cfg["data"].pop("validation")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert grpo_main([str(tmp_path / "c.yaml")]) == 0
    [m] = metrics(tmp_path / "run")
    assert m["kl"] == 0.0 and m["clip_frac"] == 0.0


def _scripted_validation(monkeypatch, values: list[float]) -> None:
    """Validation passes give the scripted val_reward_mean, one value per pass in order."""
    from kollm.train.grpo_data import ValidationSource

    real, left = ValidationSource.batches, list(values)

    def batches(self):
        v = left.pop(0)
        for b in real(self):
            yield {**b, "rewards": torch.full_like(b["rewards"], v)}

    monkeypatch.setattr(ValidationSource, "batches", batches)


def _weights(d: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(d / "model.safetensors")


@pytest.mark.parametrize("values, stop_after, best", [
    ([0.1, 0.5, 0.5, 0.2], None, 3),  # a tie: the later step
    ([0.1, 0.6, 0.5, 0.2], 2, 2),  # interrupted after the best: the resumed run still compares with it
])
def test_keep_best_exports_the_best_validation_step(tiny, prompts, tmp_path, monkeypatch, values, stop_after, best):
    import signal

    from kollm.train.export import export_checkpoint
    from kollm.train.trainer import Trainer, TrainingInterrupted

    run = tmp_path / "run"
    cfg = config(tiny, prompts, run, keep_best=True)
    cfg["validation"] = {"every": 1}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    _scripted_validation(monkeypatch, values)
    if stop_after:
        with monkeypatch.context() as m:  # SIGTERM after step 2: checkpoint, exit; then --resume
            m.setattr(Trainer, "_stop_requested", lambda self: signal.SIGTERM if self.step == stop_after else 0)
            with pytest.raises(TrainingInterrupted):
                grpo_main([str(tmp_path / "c.yaml")])
    assert grpo_main([str(tmp_path / "c.yaml")] + (["--resume"] if stop_after else [])) == 0
    val = [m["val_reward_mean"] for m in metrics(run)]
    assert val == pytest.approx(values, abs=1e-6)
    assert (run / "hf" / "latest").resolve().name == f"step-{best:08d}"
    record = json.loads((run / "export.json").read_text())
    assert record["best_step"] == best and record["best_val_reward_mean"] == pytest.approx(values[best - 1])
    assert record["last_step"] == 4 and record["export"] == f"step-{best:08d}"
    # the export is the policy of that step: the same weights as its checkpoint, not the last step's
    ref = export_checkpoint(run / "checkpoints" / f"step-{best:08d}", tmp_path / "ref")
    a, b, last = _weights(run / "hf" / "latest"), _weights(ref), _weights(run / "hf" / "step-00000004")
    assert all(torch.equal(a[k], b[k]) for k in b) and any(not torch.equal(a[k], last[k]) for k in a)
    assert sorted(p.name for p in (run / "hf").glob("step-*")) == [f"step-{best:08d}", "step-00000004"]
