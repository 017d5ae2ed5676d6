"""GRPO with a rollout server keeps the server on-policy: a real `kollm serve --allow-weight-updates
--weights-root` (a parent of the runs' output dirs)
process samples the rollouts of a 3-step run; with `grpo.sync_weights` (the default) the policy is
written to OUTPUT_DIR/rollout-weights and loaded by the server before every rollout batch (the
last one: the policy after step 2, as the step-2 checkpoint holds it) and the run's final export
after the last step, so the server's greedy tokens and logprobs end equal to the exported policy's
in process; with `sync_weights: false` they stay the initial model's. A refused sync stops the run
with the URL and the server's answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kollm.model.generate import GenerationConfig, generate
from kollm.model.hf import load_hf
from kollm.serve.testing import running_server
from kollm.train.export import load_checkpoint_model
from kollm.train.grpo import main as grpo_main

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:torch.distributed is disabled")]
KEY = "sync-key"
PROBES = [[1, 20, 30, 40], [1, 9, 60]]  # greedy probes of the served weights (token ids)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    f = tmp_path_factory.mktemp("prompts") / "train.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n"
                         for a in range(10) for b in range(3)))
    return f


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    # the runs' output dirs (tmp_path) are all under the session's base temp: the weights root
    root = str(tmp_path_factory.getbasetemp())
    with running_server(tiny, "--allow-weight-updates", "--weights-root", root, "--seed", "0", api_key=KEY) as s:
        yield s


def write_config(tiny: Path, prompts: Path, out: Path, server_url: str, model: str, val_every: int | None = None,
                 **grpo) -> Path:
    cfg = {"name": "sync", "output_dir": str(out), "seed": 0, "model": {"init_from": str(tiny)},
           "data": {"train": str(prompts), "max_prompt_len": 16, "chat_template": False},
           "grpo": {"group_size": 4, "prompts_per_step": 2, "max_new_tokens": 6, "micro_batch_size": 8,
                    "rewards": [{"name": "format", "kwargs": {"pattern": "[a-zA-Z]"}}],
                    "server": server_url, "server_model": model, **grpo},
           "optimizer": {"lr": 1e-2, "weight_decay": 0.0},
           "schedule": {"kind": "linear", "warmup_steps": 0, "final_lr_ratio": 1.0},
           "phases": [{"name": "rl", "steps": 3}], "checkpoint": {"every": 1, "keep": 5, "export_dtype": "float32"},
           "logging": {"progress": False}}
    if val_every is not None:
        cfg["data"] |= {"validation": str(prompts), "val_size": 12}
        cfg["validation"] = {"every": val_every}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(tiny: Path, prompts: Path, out: Path, server_url: str, model: str, **kw) -> Path:
    assert grpo_main([str(write_config(tiny, prompts, out, server_url, model, **kw))]) == 0
    return out


def served(server, key: str | None = KEY) -> list[tuple[list[int], list[float]]]:
    import urllib.request

    out = []
    for p in PROBES:
        body = {"model": server.model, "prompt": p, "max_tokens": 8, "temperature": 0, "logprobs": 0,
                "return_tokens_as_token_ids": True}
        req = urllib.request.Request(server.base_url + "/completions", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {key}"} if key else {})})
        with urllib.request.urlopen(req, timeout=60) as r:
            lp = json.loads(r.read())["choices"][0]["logprobs"]
        out.append(([int(t.split(":")[1]) for t in lp["tokens"]], lp["token_logprobs"]))
    return out


@torch.no_grad()
def in_process(model) -> list[tuple[list[int], list[float]]]:
    out = []
    for p in PROBES:
        ids = generate(model, [p], GenerationConfig(max_new_tokens=8, stop_token_ids=[2]))[0]
        lp = model(torch.tensor([p + ids])).logits[0, len(p) - 1:-1].float().log_softmax(-1)
        out.append((ids, lp.gather(-1, torch.tensor(ids)[:, None])[:, 0].tolist()))
    return out


def same(a, b) -> bool:
    return all(ta == tb and la == pytest.approx(lb, abs=1e-4) for (ta, la), (tb, lb) in zip(a, b))


def test_server_follows_the_policy_only_with_sync(tiny, prompts, server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # ServerRollout's key: for the rollouts and the sync alike
    torch.set_num_threads(1)
    # the module's server may have been synced by a test that ran first: back to the initial model
    from kollm.rl.rollout import ServerRollout

    ServerRollout(server.url, None, None, server.model).update_weights(tiny)
    start = server.health()["weight_updates"]
    init = in_process(load_hf(tiny))
    assert same(served(server), init)

    off = run(tiny, prompts, tmp_path / "off", server.url, server.model, sync_weights=False)
    assert same(served(server), init) and server.health()["weight_updates"] == start
    assert not (off / "rollout-weights").exists()
    assert all("weight_sync_s" not in json.loads(r) for r in (off / "metrics.jsonl").read_text().splitlines())

    on = run(tiny, prompts, tmp_path / "on", server.url + "/v1", server.model)  # a /v1 URL works too
    final = in_process(load_hf(on / "hf" / "latest"))
    assert not same(final, init)  # the policy moved: the check below can fail
    assert same(served(server), final)
    assert server.health()["weight_updates"] - start == 3 + 1  # before each of the 3 rollout batches, the export
    rows = [json.loads(r) for r in (on / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["weight_sync_s"] > 0 for r in rows)
    # the last rollout batch was sampled by the policy after step 2: what rollout-weights holds
    synced = load_file(on / "rollout-weights" / "model.safetensors")
    step2 = load_checkpoint_model(on / "checkpoints" / "step-00000002")[0].state_dict()
    assert synced.keys() <= step2.keys() and all(torch.equal(synced[k], step2[k]) for k in synced)
    last = load_file(on / "hf" / "latest" / "model.safetensors")
    assert any(not torch.equal(synced[k], last[k]) for k in synced)
    assert sorted(p.name for p in on.iterdir() if "rollout-weights" in p.name) == ["rollout-weights"]

    # Validation through the server (what makes fsdp + validation possible): it syncs first, and a
    # sync is skipped when no optimizer step came since the last: updates at the rollouts of steps
    # 1 and 2 and the validations after steps 2 and 3; the step-3 rollout and the end reuse them.
    before = server.health()["weight_updates"]
    val = run(tiny, prompts, tmp_path / "val", server.url, server.model, val_every=2)
    assert server.health()["weight_updates"] - before == 4
    rows = [json.loads(r) for r in (val / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["weight_sync_s"] > 0 and rows[1]["weight_sync_s"] > 0 and rows[2]["weight_sync_s"] == 0
    assert same(served(server), in_process(load_hf(val / "hf" / "latest")))
    from transformers import AutoTokenizer

    from kollm.data.chat import stop_token_ids
    from kollm.rl.rewards import Rewards
    from kollm.train.grpo_config import GRPOData
    from kollm.train.grpo_data import PromptSet, mean_reward

    tok = AutoTokenizer.from_pretrained(tiny)
    held = PromptSet(prompts, tok, GRPOData(max_prompt_len=16, chat_template=False), set(), limit=12)
    rewards = Rewards([{"name": "format", "kwargs": {"pattern": "[a-zA-Z]"}}])
    for row, policy in ((rows[1], load_checkpoint_model(val / "checkpoints" / "step-00000002")[0]),
                        (rows[2], load_hf(val / "hf" / "latest"))):  # the greedy reward of that step's policy
        assert row["val_reward_mean"] == pytest.approx(
            mean_reward(policy, tok, held, rewards, 6, stop_token_ids(tok, tiny)), abs=1e-6)
    assert 0 < rows[2]["val_reward_mean"] < 1 or rows[1]["val_reward_mean"] != rows[2]["val_reward_mean"]


def test_a_refused_sync_stops_the_run_with_the_servers_answer(tiny, prompts, tmp_path, openai_stub):
    stub = openai_stub(lambda call: (400, {"success": False, "message": "mis-shaped tensors: lm_head.weight"}))
    with pytest.raises(ValueError, match=r"weight sync: http://127\.0\.0\.1:\d+/update_weights_from_disk answered "
                                         r"HTTP 400: .*mis-shaped tensors: lm_head.weight"):
        run(tiny, prompts, tmp_path / "x", stub.root, "m")
    assert [c.path for c in stub.calls] == ["/update_weights_from_disk"]  # nothing sampled before the sync


def test_a_resumed_run_syncs_before_its_first_rollout(tiny, prompts, server, tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    start = server.health()["weight_updates"]
    out = tmp_path / "res"
    config = write_config(tiny, prompts, out, server.url, server.model)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KOLLM_FAULT_AT_STEP": "2"}
    r = subprocess.run([sys.executable, "-m", "kollm.cli", "grpo", str(config)], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 17, r.stderr[-3000:]  # died right after step 2, as a crash would
    assert server.health()["weight_updates"] - start == 2  # the rollouts of steps 1 and 2
    assert grpo_main([str(config), "--resume"]) == 0  # resumes from the step-2 checkpoint
    # the server still holds the policy after step 1; the resumed run syncs before its first rollout
    # (step 3), then gives the server its export
    assert server.health()["weight_updates"] - start == 2 + 2
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[2]["weight_sync_s"] > 0
    assert same(served(server), in_process(load_hf(out / "hf" / "latest")))
