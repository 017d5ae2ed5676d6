"""Training failures found by attacking kollm: a bad update is never checkpointed (nor resumed
into), SIGINT/SIGTERM checkpoint at the step boundary and exit cleanly, the metrics rewrite on
resume is atomic, and nonsense config values are refused naming their key."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from synthetic import SyntheticLoader
from test_trainer import make_cfg

from kollm.model.config import get_preset
from kollm.model.transformer import build_model
from kollm.train import checkpoint
from kollm.train.config import config_from_dict
from kollm.train.objectives.lm import LMObjective
from kollm.train.trainer import Trainer, TrainingDiverged, TrainingInterrupted

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def trainer(tmp_path, **kw) -> Trainer:
    torch.manual_seed(0)
    kw = {"seqs": 2, "micro": 2} | kw  # one micro-batch of 2 sequences per step: fast
    return Trainer(make_cfg(tmp_path, **kw), build_model(get_preset("tiny")), LMObjective("causal"), SyntheticLoader())


def poison_after_step(t: Trainer, at: int, how) -> None:
    """Corrupt the state right after optimizer step `at`: the loss and gradient norm of that step
    were finite, so only a look at the weights or moments can tell."""
    step = t.optimizer.step

    def wrapped(*a, **k):
        out = step(*a, **k)
        if t.step + 1 == at:
            with torch.no_grad():
                how(t)
        return out

    t.optimizer.step = wrapped


def test_a_nonfinite_update_is_never_checkpointed(tmp_path):
    t = trainer(tmp_path / "w", steps=4, checkpoint={"every": 1, "export_hf": False})
    poison_after_step(t, 3, lambda t: t.model.model.layers[0].mlp.up_proj.weight.fill_(float("nan")))
    with pytest.raises(TrainingDiverged, match=r"not writing checkpoint step 3: 1 parameter.*layers\.0\.mlp\.up_proj"
                                                r".*last good checkpoint: .*step-00000002"):
        t.fit()
    assert [p.name for p in checkpoint.step_dirs(tmp_path / "w" / "checkpoints")] == ["step-00000001",
                                                                                       "step-00000002"]
    # optimizer moments too (an overflowing second moment)
    t = trainer(tmp_path / "m", steps=4, checkpoint={"every": 2, "export_hf": False})

    def inf_moment(t):
        st = next(iter(t.optimizer.state.values()))
        st["exp_avg_sq"].fill_(float("inf"))

    poison_after_step(t, 2, inf_moment)
    with pytest.raises(TrainingDiverged, match=r"optimizer exp_avg_sq of .*last good checkpoint: none"):
        t.fit()
    assert checkpoint.step_dirs(tmp_path / "m" / "checkpoints") == []


def test_a_nonfinite_checkpoint_is_not_resumed(tmp_path):
    """One written before the check existed (DCP files with NaN weights) is refused on load."""
    import torch.distributed.checkpoint as dcp

    t = trainer(tmp_path, steps=1, checkpoint={"every": 1, "export_hf": False})
    t.fit()
    good = checkpoint.latest(tmp_path / "checkpoints")
    with torch.no_grad():
        t.model.model.norm.weight.fill_(float("nan"))
    dcp.save({"model": checkpoint.ModelState(t.model)}, checkpoint_id=str(tmp_path / "nan"))
    for f in ("trainer.json", "rank-0.json"):
        (tmp_path / "nan" / f).write_text((good / f).read_text())
    with pytest.raises(checkpoint.NonFiniteState, match=r"nan: holds NaN/inf in 1 tensors \(model\.norm\.weight"):
        checkpoint.load(tmp_path / "nan", trainer(tmp_path / "r").model, None)


def test_sigint_checkpoints_at_the_step_boundary_and_exits_cleanly(tmp_path, capsys):
    t = trainer(tmp_path, steps=4, checkpoint={"every": 0, "export_hf": False})
    train_step = t.train_step

    def step_then_ctrl_c():
        m = train_step()
        if t.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-run; the step in flight completes
        return m

    t.train_step = step_then_ctrl_c
    before = signal.getsignal(signal.SIGINT)  # Python's handler, or SIG_IGN when started in the background
    with pytest.raises(TrainingInterrupted) as e:
        t.fit()
    assert e.value.code == 130 and e.value.signal == signal.SIGINT
    assert e.value.checkpoint.name == "step-00000002"
    assert checkpoint.read_trainer_state(e.value.checkpoint)["step"] == 2
    err = capsys.readouterr().err
    assert "stopped by SIGINT after step 2/4" in err and "--resume" in err
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    assert [h["step"] for h in trainer(tmp_path, steps=4).fit(resume=True)] == [3, 4]  # and it resumes there


def test_metrics_rewrite_on_resume_is_atomic(tmp_path, monkeypatch):
    metrics = tmp_path / "metrics.jsonl"
    original = "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3))
    metrics.write_text(original)
    t = trainer(tmp_path, steps=3)
    t.step = 1

    def killed_while_writing(self, *a, **k):  # what a kill mid-rewrite leaves: a truncated file
        open(self, "w").close()
        raise OSError("killed")

    monkeypatch.setattr(Path, "write_text", killed_while_writing)
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError, match="killed"):
        t._open_sinks()
    assert metrics.read_text() == original  # the old file, whole
    monkeypatch.undo()
    t._open_sinks()
    for s in t._sinks:
        s.close()
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == [1]


@pytest.mark.parametrize("extra, key", [
    ({"phases": [{"name": "a", "steps": -3}]}, "phases[0].steps must be positive, got -3"),
    ({"phases": [{"name": "a", "tokens": 0}]}, "phases[0].tokens must be positive, got 0"),
    ({"checkpoint": {"every": -1}}, "checkpoint.every must be >= 0"),
    ({"checkpoint": {"keep": -2}}, "checkpoint.keep must be >= 0"),
    ({"logging": {"every": 0}}, "logging.every must be positive"),
    ({"optimizer": {"lr": float("inf")}}, "optimizer.lr must be a finite number > 0, got inf"),
    ({"optimizer": {"lr": -1e-3}}, "optimizer.lr must be a finite number > 0"),
    ({"optimizer": {"lr": 0}}, "optimizer.lr must be a finite number > 0, got 0.0"),  # trained nothing, exit 0
    ({"optimizer": {"betas": [0.9, 1.5]}}, "optimizer.betas must be two numbers in [0, 1)"),
    ({"schedule": {"warmup_steps": -1}}, "schedule.warmup_steps must be >= 0"),
    ({"phases": [{"name": "a", "steps": 2, "lr": float("nan")}]}, "phases[0].lr must be a finite number"),
])
def test_config_values_out_of_range_name_their_key(extra, key):
    raw = {"phases": [{"name": "a", "steps": 3}]} | extra
    with pytest.raises(ValueError, match=key.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        config_from_dict(raw)


def test_a_flipped_byte_is_found_on_load_and_export(tmp_path, capsys):
    from kollm.cli import main

    t = trainer(tmp_path, steps=1, checkpoint={"every": 1, "export_hf": False})
    t.fit()
    ck = checkpoint.latest(tmp_path / "checkpoints")
    recorded = json.loads((ck / checkpoint.CHECKSUMS).read_text())
    assert set(recorded) == {f.name for f in ck.iterdir()} - {checkpoint.CHECKSUMS}
    checkpoint.load(ck, trainer(tmp_path / "a").model, None)  # intact: loads
    weights = max((f for f in ck.iterdir() if f.suffix == ".distcp"), key=lambda f: f.stat().st_size)
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit, in the middle of the tensors
    weights.write_bytes(bytes(raw))
    with pytest.raises(checkpoint.CorruptCheckpoint, match=rf"{weights}: checksum mismatch"):
        checkpoint.load(ck, trainer(tmp_path / "b").model, None)
    assert main(["export", "--checkpoint", str(ck), "--out", str(tmp_path / "hf")]) == 1
    err = capsys.readouterr().err
    assert f"{weights}: checksum mismatch" in err and "Traceback" not in err


@pytest.mark.parametrize("stage", ["pretrain", "sft", "dpo", "distill", "grpo"])
def test_a_diverged_stage_exits_3_with_its_message(stage, monkeypatch, capsys):
    # Every training stage lets TrainingDiverged rise; the `kollm` dispatcher turns it into exit
    # code 3 and the one line naming the step and the last good checkpoint (docs/training.md).
    import importlib

    from kollm import cli

    def diverge(argv):
        raise TrainingDiverged("non-finite loss (nan) at step 3; last good checkpoint: runs/x/checkpoints/step-00000002")

    monkeypatch.setattr(importlib.import_module(cli.STAGES[stage][0]), "main", diverge)
    assert cli.main([stage, "cfg.yaml"]) == 3
    assert capsys.readouterr().err == (f"kollm {stage}: non-finite loss (nan) at step 3; "
                                       "last good checkpoint: runs/x/checkpoints/step-00000002\n")
    def bug(argv):
        raise RuntimeError("a bug, not a divergence")

    monkeypatch.setattr(importlib.import_module(cli.STAGES[stage][0]), "main", bug)
    with pytest.raises(RuntimeError, match="a bug"):  # any other RuntimeError keeps its traceback
        cli.main([stage, "cfg.yaml"])
