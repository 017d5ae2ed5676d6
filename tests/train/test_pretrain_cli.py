"""`kollm pretrain recipes/tiny-pretrain.yaml` end to end on the real loader (token shards, XLDA
packing, three phases): a run killed mid-way (os._exit in the process, no cleanup) and resumed
with --resume logs exactly the loss curve of the uninterrupted run, and the exported Hugging Face
directory gives transformers the logits of the trained checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kollm.train.export import load_checkpoint_model
from kollm.train.export import main as export_main

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny-pretrain.yaml"
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:torch.distributed is disabled")]


def pretrain(cfg_path: Path, *args: str, fault: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if fault:
        env["KOLLM_FAULT_AT_STEP"] = str(fault)
    return subprocess.run([sys.executable, "-m", "kollm.cli", "pretrain", str(cfg_path), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory):
    work = tmp_path_factory.mktemp("pretrain")
    raw = yaml.safe_load(RECIPE.read_text())
    paths = {}
    for name in ("full", "killed"):
        raw["output_dir"] = str(work / name)
        raw["data"]["shards"] = str(shards)
        if name == "full":  # held-out validation must not change what training does (killed == full below)
            raw["data"]["validation"] = str(shards)
            raw["validation"] = {"every": 8, "batches": 2}
        (work / f"{name}.yaml").write_text(yaml.safe_dump(raw))
        paths[name] = work / f"{name}.yaml"
    full = pretrain(paths["full"])
    assert full.returncode == 0, full.stderr[-4000:]
    killed = pretrain(paths["killed"], fault=10)
    assert killed.returncode == 17, killed.stderr[-4000:]  # died at step 10, last checkpoint step 8
    after_kill = sorted(p.name for p in (work / "killed" / "checkpoints").iterdir())
    again = pretrain(paths["killed"])  # without --resume an earlier run's checkpoints are not overwritten
    assert again.returncode == 1 and "pass --resume" in again.stderr
    resumed = pretrain(paths["killed"], "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    return work, after_kill


def test_kill_resume_and_export(runs, tmp_path):
    # One test on purpose: pytest-xdist would run a module fixture once per worker.
    work, after_kill = runs
    assert after_kill == ["step-00000004", "step-00000008"]  # keep 2; nothing half-written
    full, killed = losses(work / "full"), losses(work / "killed")
    assert sorted(full) == list(range(1, 21))
    assert killed == full  # bit for bit: same floats, every step
    full_rows = [json.loads(line) for line in (work / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in full_rows if "val_loss" in r] == [8, 16, 20]
    # per-language next-token losses, in training and validation, weighted back to the whole
    assert {"loss_en", "loss_ko", "val_loss_en", "val_loss_ko"} <= set(full_rows[-1])
    assert min(r["loss_ko"] for r in full_rows) < full_rows[0]["loss_ko"]
    rows = [json.loads(line) for line in (work / "killed" / "metrics.jsonl").read_text().splitlines()]
    # steps 9-10 of the killed run were dropped on resume and trained again: one line per step
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert [r["phase"] for r in rows][-5:] == ["anneal"] + ["long_context"] * 4

    from transformers import AutoModelForCausalLM

    model, state = load_checkpoint_model(work / "full")
    assert state["step"] == 20 and model.config.rope_theta == 1e6  # exported as last trained
    assert export_main(["--checkpoint", str(work / "full" / "checkpoints"), "--out", str(tmp_path / "hf")]) == 0
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)
    assert (work / "full" / "hf" / "step-00000020" / "config.json").is_file()  # the end-of-run export


def test_config_mistakes_fail_before_training(shards, tmp_path, capsys):
    from kollm.cli import main

    base = ["pretrain", str(RECIPE), "--set", f"data.shards={shards}", "--set", f"output_dir={tmp_path / 'run'}"]
    # shards made by a larger tokenizer than the model's vocabulary (ids < 256 vs 100 rows)
    assert main(base + ["--set", "model.overrides={vocab_size: 100}"]) == 1
    err = capsys.readouterr().err
    assert "token ids reach 2" in err and "100 embedding rows" in err and "Traceback" not in err
    # a model no Hugging Face architecture expresses, with the end-of-run export on
    assert main(base + ["--set", "model.overrides={norm_placement: post}"]) == 1
    assert "cannot export norm_placement='post'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
