"""The merge recipes parse; the tiny one runs and gives the slerp its t schedule says."""

import shutil
from pathlib import Path

import torch
from merge_helpers import read_all, tiny_hf

from kollm.cli import main as cli_main
from kollm.merge.config import parse_config
from kollm.merge.methods import slerp

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_tiny_merge_recipe_runs(tmp_path, monkeypatch):
    shutil.copy(RECIPES / "tiny-merge.yaml", tmp_path / "tiny-merge.yaml")
    a, b = tiny_hf(tmp_path / "tiny" / "a", seed=1), tiny_hf(tmp_path / "tiny" / "b", seed=2)
    monkeypatch.chdir(tmp_path / "tiny")  # model paths fall back to the config's directory
    assert cli_main(["merge", str(tmp_path / "tiny-merge.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    A, B, M = read_all(a), read_all(b), read_all(tmp_path / "out")
    for i, t_attn in enumerate([0.0, 0.5, 1.0]):
        n = f"model.layers.{i}.self_attn.o_proj.weight"
        assert torch.allclose(M[n], slerp(A[n], B[n], t_attn), atol=1e-6)
        n = f"model.layers.{i}.mlp.gate_proj.weight"
        assert torch.allclose(M[n], slerp(A[n], B[n], 1 - t_attn), atol=1e-6)
    assert torch.equal(M["model.layers.0.self_attn.q_proj.weight"], A["model.layers.0.self_attn.q_proj.weight"])


def test_dna_recipe_parses_once_models_exist(tmp_path):
    for d in ("runs/dna-8b-sft/hf/latest", "models/Llama-3.1-8B-Instruct"):
        (tmp_path / d).mkdir(parents=True)
    shutil.copy(RECIPES / "dna-8b-slerp.yaml", tmp_path / "dna.yaml")
    cfg = parse_config(tmp_path / "dna.yaml")
    assert cfg.merge_method == "slerp" and cfg.tokenizer_source == "base" and cfg.dtype == "bfloat16"
    assert cfg.base_model == str(tmp_path / "runs/dna-8b-sft/hf/latest")
    assert [s.layer_range for s in cfg.slices[0].sources] == [(0, 32), (0, 32)]
