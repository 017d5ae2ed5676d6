"""`kollm dpo CONFIG`: the first step's loss is ln 2 (policy = reference), per-step DPO metrics,
bad rows counted with file:line, reference log-probs stored beside the data and reused by the next
run, a Hugging Face export, and an exact resume after a crash."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kollm.cli import main as kollm_main

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:torch.distributed is disabled")]
SPECIALS = ["<pad>", "<s>", "</s>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def _rows(n: int, seed: int = 0) -> list[dict]:
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        right = f"{a} + {b} = {a + b}. The answer is {a + b}."
        wrong = right[: right.rindex(" ") + 1] + f"{a + b + rng.randint(1, 5)}."
        if i % 2:  # conversational rows beside plain ones
            rows.append({"id": f"r{i}", "prompt": [{"role": "user", "content": f"{a} + {b}?"}],
                         "chosen": [{"role": "assistant", "content": right}],
                         "rejected": [{"role": "assistant", "content": wrong}]})
        else:
            rows.append({"id": f"r{i}", "prompt": f"Q: {a} + {b}?\nA:", "chosen": " " + right, "rejected": " " + wrong})
    return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory, write_tiny_llama):
    root = tmp_path_factory.mktemp("dpo")
    text = [r["chosen"] if isinstance(r["chosen"], str) else r["chosen"][0]["content"] for r in _rows(60)]
    model = write_tiny_llama(root / "model", text * 3, SPECIALS, vocab_size=300, hidden=32, max_positions=128,
                             init_std=0.1)
    data = root / "data"
    data.mkdir()
    lines = [json.dumps(r) for r in _rows(24)]
    lines.insert(3, json.dumps({"prompt": "no rejected", "chosen": "x"}))
    lines.insert(7, "{not json")
    (data / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    (data / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(6, seed=1)))
    cfg = {"name": "t", "output_dir": str(root / "run"), "seed": 0, "model": {"init_from": str(model)},
           "data": {"train": str(data / "pairs.jsonl"), "validation": str(data / "heldout.jsonl")},
           "dpo": {"beta": 0.1, "epochs": 1, "pairs_per_step": 4, "micro_batch": 2, "max_length": 64, "ref_batch": 5},
           "optimizer": {"lr": 1e-3, "weight_decay": 0.0},
           "schedule": {"kind": "cosine", "warmup_steps": 1}, "checkpoint": {"every": 2, "keep": 5,
                                                                                 "export_dtype": "float32"},
           "logging": {"progress": False}}
    path = root / "dpo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return root, path


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def first_run(setup):
    root, cfg = setup
    import io
    from contextlib import redirect_stderr

    err = io.StringIO()
    with redirect_stderr(err):
        assert kollm_main(["dpo", str(cfg)]) == 0
    return root / "run", err.getvalue()


def test_first_step_is_ln2_and_metrics(first_run, setup):
    run, err = first_run
    rows = metrics(run)
    assert len(rows) == 6  # 24 pairs / 4 per step
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert rows[0]["reward_accuracy"] == 0 and rows[0]["margin"] == pytest.approx(0, abs=1e-6)
    for k in ("loss", "reward_accuracy", "chosen_reward", "rejected_reward", "margin"):
        assert all(k in r for r in rows)
    # rewards are β·(policy − reference): the margin is their difference, step by step
    # float32 rewards: their difference is exact to a few ulps of the rewards, not of the margin
    def diff_ok(m, c, r):
        return abs(m - (c - r)) <= 8 * 2**-23 * max(abs(c), abs(r), 1e-3)

    assert all(diff_ok(r["margin"], r["chosen_reward"], r["rejected_reward"]) for r in rows)
    assert rows[-1]["loss"] < math.log(2)
    # held-out pairs at the end: preference accuracy and the DPO loss on them
    assert "val_reward_accuracy" in rows[-1] and 0 <= rows[-1]["val_reward_accuracy"] <= 1
    assert diff_ok(rows[-1]["val_margin"], rows[-1]["val_chosen_reward"], rows[-1]["val_rejected_reward"])
    assert "pairs.jsonl:4" in err and "missing_rejected" in err and "pairs.jsonl:8" in err
    assert (run / "hf" / "latest" / "config.json").is_file()
    # the first run stored one reference file per data file, beside the data; named from its own
    # log, not a glob, since a later test in this module adds a file for another max_length
    stored = [Path(p) for p in re.findall(r"reference log-probs stored in (.+)$", err, re.M)]
    assert sorted(p.name.split(".ref-")[0] for p in stored) == ["heldout.jsonl", "pairs.jsonl"]
    assert all(p.parent == setup[0] / "data" and p.is_file() for p in stored)


def test_reference_logps_are_reused(first_run, setup, capfd):
    root, cfg = setup
    assert kollm_main(["dpo", str(cfg), "--set", f"output_dir={root / 'run2'}", "--set", "dpo.epochs=0.2"]) == 0
    assert "reused from" in capfd.readouterr().err
    assert metrics(root / "run2")[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    # another β does not change the reference: same file; another max_length does
    assert kollm_main(["dpo", str(cfg), "--set", f"output_dir={root / 'run3'}", "--set", "dpo.epochs=0.2",
                       "--set", "dpo.max_length=48"]) == 0
    assert "stored in" in capfd.readouterr().err
    assert len(list((root / "data").glob("pairs.jsonl.ref-*.pt"))) == 2


def test_resume_is_exact(first_run, setup):
    root, cfg = setup
    run = root / "crashed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KOLLM_FAULT_AT_STEP": "3"}
    p = subprocess.run([sys.executable, "-m", "kollm.cli", "dpo", str(cfg), "--set", f"output_dir={run}"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 17, p.stderr[-2000:]
    assert kollm_main(["dpo", str(cfg), "--set", f"output_dir={run}"]) == 1  # refuses without --resume
    assert kollm_main(["dpo", str(cfg), "--set", f"output_dir={run}", "--resume"]) == 0
    want = [r["loss"] for r in metrics(first_run[0])]
    got = [r["loss"] for r in metrics(run)]
    assert [r["step"] for r in metrics(run)] == list(range(1, 7))
    assert got == pytest.approx(want, abs=1e-6)


def test_config_errors(setup, capfd):
    root, cfg = setup
    assert kollm_main(["dpo", str(cfg), "--set", "dpo.loss=hinge"]) == 1
    assert "dpo.loss" in capfd.readouterr().err
    assert kollm_main(["dpo", str(cfg), "--set", "dpo.betaa=1"]) == 1
    assert "dpo.betaa: unknown key" in capfd.readouterr().err
    assert kollm_main(["dpo", str(cfg), "--set", f"data.train={root / 'nope.jsonl'}"]) == 1
    assert "nope.jsonl" in capfd.readouterr().err


@pytest.mark.parametrize("key, value, message", [
    ("epochs", 0, "dpo.epochs must be a finite number > 0 (a fraction trains part of an epoch), got 0"),
    ("epochs", float("nan"), "dpo.epochs must be a finite number > 0"),
    ("beta", 0.0, "dpo.beta must be a finite number > 0, got 0.0"),
    ("online", {"rounds": 0}, "dpo.online.rounds must be positive, got 0"),
    ("online", {"k": 1}, "dpo.online.k must be >= 2 (best vs worst), got 1"),
    ("online", {"temperature": 0.0}, "dpo.online.temperature must be a finite number > 0"),
    ("online", {"top_p": 0}, "dpo.online.top_p must be in (0, 1], got 0"),
    ("online", {"gen_batch": 0}, "dpo.online.gen_batch must be positive"),
    ("online", {"max_new_tokens": -1}, "dpo.online.max_new_tokens must be positive"),
    ("online", {"prompts_per_round": -2}, "dpo.online.prompts_per_round must be >= 0"),
    ("online", {"max_length_ratio": 0.5}, "dpo.online.max_length_ratio must be >= 1"),
])
def test_values_out_of_range_name_their_key(key, value, message):
    """`dpo.epochs: 0` trained one step and exited 0; each such value is refused naming its key."""
    from kollm.train.config import build_section
    from kollm.train.dpo import DPOSection

    with pytest.raises(ValueError, match=re.escape(message)):
        build_section(DPOSection, {key: value}, "dpo")
    assert build_section(DPOSection, {"epochs": 0.2}, "dpo").epochs == 0.2  # part of an epoch is fine


@pytest.mark.parametrize("recipe,pairs,steps,beta,loss,lr", [
    ("dna-8b-dpo.yaml", 80_000, 1250, 0.1, "sigmoid", 1e-6),  # DNA 1.0 §4.4: 2 epochs of ~80K, β 0.1, 1e-6
    ("trillion-7b-dpo.yaml", 200_000, 1563, 5.0, "sigmoid_norm", 5e-7),  # Tulu 3's settings, ~200K pairs
    ("tiny-dpo.yaml", 430, 54, 0.1, "sigmoid", 5e-4),
])
def test_recipes_parse(recipe, pairs, steps, beta, loss, lr):
    from kollm.train.dpo import load_dpo_config, train_config

    raw, dpo, train, _ = load_dpo_config(Path(__file__).resolve().parents[2] / "recipes" / recipe)
    cfg = train_config(raw, dpo, pairs)
    assert (cfg.phases[0].steps, dpo.beta, dpo.loss, cfg.optimizer.lr) == (steps, beta, loss, lr)
    assert train and cfg.data.mask_policy == "causal"
