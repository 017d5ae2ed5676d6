"""Exact resume, every stage: `kollm STAGE` run straight through, and again killed at a step drawn
at random (KOLLM_FAULT_AT_STEP: os._exit, no cleanup, no final checkpoint, as SIGKILL leaves it)
then resumed with --resume, must end with the same exported tensors bit for bit and log the same
metrics.jsonl rows (timing keys aside). Stages: pretrain (three phases), SFT, DPO, online DPO
(killed in round 0 of two), distillation with off-policy generation on, and GRPO with rewards that
vary within a group (so the policy-gradient term trains, not only the KL).

The kill step is `random.Random(f"{seed}:{stage}").randint(1, steps)`, seed 0 by default;
KOLLM_RESUME_SEED=N draws other steps (the seed is in the test id and the failure message)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sft_fixtures import make_model_dir, math_rows, sft_config, write_jsonl  # noqa: E402
from test_distill import _cfg as distill_cfg  # noqa: E402
from test_distill import world  # noqa: E402, F401 (fixture)
from test_dpo import setup as dpo_setup  # noqa: E402, F401 (fixture)
from test_dpo_online import setup as online_setup  # noqa: E402, F401 (fixture)
from test_grpo import config as grpo_config  # noqa: E402
from test_grpo import prompts  # noqa: E402, F401 (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:torch.distributed is disabled")]

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parents[1] / "recipes" / "tiny-pretrain.yaml"
SEED = int(os.environ.get("KOLLM_RESUME_SEED", "0"))
TIMING = {"time", "tokens_per_s", "mfu", "peak_mem_mb"}  # and every key ending in _s (seconds)


def kollm(*argv: str, fault: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           # the online DPO reward (test_dpo_online:char_reward) is imported by dotted path
           "PYTHONPATH": os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("KOLLM_FAULT_AT_STEP", None)
    if fault:
        env["KOLLM_FAULT_AT_STEP"] = str(fault)
    return subprocess.run([sys.executable, "-m", "kollm.cli", *argv], env=env, capture_output=True, text=True,
                          timeout=600)


# Each stage: (argv before --set output_dir=..., the run's metrics.jsonl files relative to the run).
def _pretrain(request, work: Path) -> list[str]:
    raw = yaml.safe_load(RECIPE.read_text())
    raw["data"]["shards"] = str(request.getfixturevalue("shards"))
    for phase, steps in zip(raw["phases"], (5, 3, 3)):  # stable → anneal → long context (seq_len 64 → 128)
        phase["steps"] = steps
    raw["checkpoint"]["every"] = 3
    (work / "pretrain.yaml").write_text(yaml.safe_dump(raw))
    return ["pretrain", str(work / "pretrain.yaml")]


def _sft(request, work: Path) -> list[str]:
    model = make_model_dir(work / "model")
    train = write_jsonl(work / "train.jsonl", math_rows(24))
    val = write_jsonl(work / "val.jsonl", math_rows(4, offset=100))
    cfg = sft_config(model, train, work / "unused", steps=6, seq_len=128, batch_size=2, validation=val, every=2,
                     val_every=3)
    (work / "sft.yaml").write_text(yaml.safe_dump(cfg))
    return ["sft", str(work / "sft.yaml")]


def _dpo(request, work: Path) -> list[str]:
    _, cfg = request.getfixturevalue("dpo_setup")
    return ["dpo", str(cfg)]


def _dpo_online(request, work: Path) -> list[str]:
    _, cfg = request.getfixturevalue("online_setup")
    # two rounds (the fault kills in round 0; round 1 samples from round 0's resumed policy)
    return ["dpo", "--online", str(cfg), "--set", "dpo.online.rounds=2", "--set", "dpo.pairs_per_step=2",
            "--set", "dpo.micro_batch=2", "--set", "checkpoint.every=1"]


def _distill(request, work: Path) -> list[str]:
    root, _ = request.getfixturevalue("world")
    # off-policy from the first batch, rising to 1 after the second validation (DistiLLM's rule, the
    # default, with a margin of -10: every validation counts as worse); a generation budget
    # of 24 new tokens fits the phase's seq_len (64) after the longest prompt (39) but not the
    # longest example (54): a resumed run must still budget by the phase's seq_len
    raw = distill_cfg(root, work / "unused", off_policy_init=0.5, off_policy_step=0.5, off_policy_margin=-10.0,
                      max_new_tokens=24)
    raw["validation"] = {"every": 2}
    (work / "distill.yaml").write_text(yaml.safe_dump(raw))
    return ["distill", str(work / "distill.yaml")]


def _grpo(request, work: Path) -> list[str]:
    raw = grpo_config(request.getfixturevalue("tiny"), request.getfixturevalue("prompts"), work / "unused")
    (work / "grpo.yaml").write_text(yaml.safe_dump(raw))
    return ["grpo", str(work / "grpo.yaml")]


STAGES = {"pretrain": _pretrain, "sft": _sft, "dpo": _dpo, "dpo-online": _dpo_online, "distill": _distill,
          "grpo": _grpo}


def metrics(run: Path) -> dict[str, list[dict]]:
    """Every metrics.jsonl of the run (online DPO: one per round), timing keys dropped."""
    return {str(p.relative_to(run)): [{k: v for k, v in json.loads(line).items()
                                       if k not in TIMING and not k.endswith("_s")}
                                      for line in p.read_text().splitlines()]
            for p in sorted(run.rglob("metrics.jsonl"))}


def exported(run: Path) -> tuple[dict[str, torch.Tensor], dict]:
    hf = run / "hf" / "latest"
    tensors = {}
    for f in sorted(hf.glob("*.safetensors")):
        tensors |= load_file(f)
    return tensors, json.loads((hf / "config.json").read_text())


@pytest.mark.parametrize("stage", list(STAGES), ids=[f"{s}-seed{SEED}" for s in STAGES])
def test_killed_and_resumed_run_is_bit_identical(stage, request, tmp_path):
    argv = STAGES[stage](request, tmp_path)
    full, killed = tmp_path / "full", tmp_path / "killed"
    r = kollm(*argv, "--set", f"output_dir={full}")
    assert r.returncode == 0, r.stderr[-4000:]
    want = metrics(full)
    steps = len(next(iter(want.values())))  # online DPO: round 0's steps (a fault kills in the first trainer)
    k = random.Random(f"{SEED}:{stage}").randint(1, steps)
    where = f"{stage}: killed after step {k} of {steps} (KOLLM_RESUME_SEED={SEED})"
    r = kollm(*argv, "--set", f"output_dir={killed}", fault=k)
    assert r.returncode == 17, f"{where}: {r.stderr[-4000:]}"
    r = kollm(*argv, "--set", f"output_dir={killed}", "--resume")
    assert r.returncode == 0, f"{where}: {r.stderr[-4000:]}"

    got = metrics(killed)
    assert got.keys() == want.keys(), where
    for name in want:
        assert [m["step"] for m in got[name]] == [m["step"] for m in want[name]], f"{where}: {name}"
        for a, b in zip(want[name], got[name]):
            assert a == b, f"{where}: {name} step {a['step']}: " + \
                ", ".join(f"{key} {a.get(key)} != {b.get(key)}" for key in a.keys() | b.keys() if a.get(key) != b.get(key))
    (ta, ca), (tb, cb) = exported(full), exported(killed)
    assert ca == cb, where
    assert ta.keys() == tb.keys() and ta, where
    differ = [key for key in ta if not torch.equal(ta[key], tb[key])]
    assert not differ, f"{where}: {len(differ)} of {len(ta)} exported tensors differ, e.g. {differ[:3]}"

    rows = [m for ms in want.values() for m in ms]
    if stage == "distill":  # generated batches were trained, from a buffer that filled
        # (the step-0 validation row carries no training keys)
        assert max(m.get("off_policy_prob", 0) for m in rows) == 1.0 and max(m.get("replay_size", 0) for m in rows) > 0
    if stage == "grpo":  # rewards varied within groups: non-zero advantages, the policy gradient trained
        assert max(m["reward_std"] for m in rows) > 0 and max(m["reward_mean"] for m in rows) > 0
