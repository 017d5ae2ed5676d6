"""Every training stage is declared by a StageSpec (kollm.train.spec) and its config goes through
the one loader: the same YAML + `--set` handling, strictness and error messages for pretrain, sft,
dpo, distill and grpo (each once had its own loader, or none)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kollm.train.config import TrainConfig
from kollm.train.spec import StageSpec
from kollm.train.stages import STAGES, stage

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
RECIPE = {"pretrain": "tiny-pretrain.yaml", "sft": "tiny-sft.yaml", "dpo": "tiny-dpo.yaml",
          "distill": "tiny-distill.yaml", "grpo": "tiny-grpo.yaml"}


def trainer_part(cfg) -> TrainConfig | dict:
    """The trainer's sections of a stage's config (DPO keeps them raw until the pairs are counted)."""
    return cfg[0] if isinstance(cfg, tuple) else cfg if isinstance(cfg, TrainConfig) else cfg.train


def test_every_stage_declares_its_parts():
    assert list(STAGES) == ["pretrain", "sft", "dpo", "distill", "grpo"]  # the order a model is built in
    for name in STAGES:
        spec = stage(name)
        assert isinstance(spec, StageSpec) and spec.name == name
        assert all(dataclasses.is_dataclass(cls) for cls in spec.sections.values()), name
        assert callable(spec.config) and callable(spec.data) and callable(spec.objective) and callable(spec.model)
    assert set(stage("dpo").sections) == {"dpo"} and set(stage("grpo").sections) == {"data", "grpo"}
    assert set(stage("distill").sections) == {"teacher", "distill"} and not stage("sft").sections
    with pytest.raises(KeyError, match="'merge': not a training stage"):
        stage("merge")


@pytest.mark.parametrize("name", list(RECIPE))
def test_one_loader_for_every_stage(name, tmp_path):
    spec, recipe = stage(name), RECIPES / RECIPE[name]
    cfg = spec.load(recipe, ["optimizer.lr=0.0003", "seed=7"])
    part = trainer_part(cfg)
    if isinstance(part, dict):  # DPO: raw, built when the pairs are counted
        assert part["optimizer"]["lr"] == 3e-4 and part["seed"] == 7
    else:
        assert part.optimizer.lr == 3e-4 and part.seed == 7
    # the same strictness and the same words, whichever stage
    with pytest.raises(KeyError, match=f"^'?{recipe}: optimizer.lrr: unknown key"):
        spec.load(recipe, ["optimizer.lrr=1"])
    with pytest.raises(KeyError, match=f"^'?{recipe}: nope: unknown key"):
        spec.load(recipe, ["nope=1"])
    with pytest.raises(FileNotFoundError, match=f"nowhere.yaml: no such {name} config"):
        spec.load(tmp_path / "nowhere.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("phases: [\n")
    with pytest.raises(ValueError, match=f"{bad}: invalid YAML"):
        spec.load(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ValueError, match=f"{bad}: expected a mapping, got list"):
        spec.load(bad)
    for section in spec.sections:  # a stage's own section is as strict as the trainer's
        with pytest.raises(KeyError, match=f"{recipe}: {section}.nope: unknown key"):
            spec.load(recipe, [f"{section}.nope=1"])


def test_sfts_old_packing_key_names_its_new_name():
    """`packing` was SFT's pack-or-pad boolean and a pretraining phase's XLDA mode; SFT's is now
    data.pack_conversations, and a recipe with the old key is told so."""
    with pytest.raises(KeyError, match=r"tiny-sft.yaml: data.packing: renamed data.pack_conversations"):
        stage("sft").load(RECIPES / "tiny-sft.yaml", ["data.packing=false"])
    assert stage("sft").load(RECIPES / "tiny-sft.yaml", ["data.pack_conversations=false"]).data.pack_conversations \
        is False
    assert stage("pretrain").load(RECIPES / "trillion-7b.yaml").phases[0].data.packing == "literal"  # XLDA's


def test_phase_data_is_the_data_layers_typed_dataclass():
    from kollm.data.loader import PhaseData

    cfg = stage("pretrain").load(RECIPES / "tiny-pretrain.yaml")
    assert all(isinstance(p.data, PhaseData) and p.data.name == p.name for p in cfg.phases)
    with pytest.raises(KeyError, match=r"phase 'stable': data: phase: unknown key 'seq_length'"):
        stage("pretrain").load(RECIPES / "tiny-pretrain.yaml", ["phases.0.data={seq_length: 64}"])
    with pytest.raises(KeyError, match=r"data.name is set from the phase's name"):
        stage("pretrain").load(RECIPES / "tiny-pretrain.yaml", ["phases.0.data={name: x}"])
    with pytest.raises(ValueError, match=r"phase 'stable': rho must be a number in \[0, 1\], got 2"):
        stage("pretrain").load(RECIPES / "tiny-pretrain.yaml", ["phases.0.data.rho=2"])
