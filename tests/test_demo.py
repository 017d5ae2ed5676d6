"""The README's first command end to end: the tiny-demo recipe on the embedded corpus, with the
pretraining shortened by --set overrides (the full demo trains 200 steps, minutes on 2 cores)."""

import json
from pathlib import Path

import pytest
import torch

from kollm.demo_corpus import write_demo_corpus
from kollm.recipe import load_recipe, run_recipe

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny-demo.yaml"


def test_demo_recipe_end_to_end(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    recipe = load_recipe(RECIPE)
    recipe.workdir = str(tmp_path / "demo")
    pretrain = next(s for s in recipe.stages if s.name == "pretrain")
    pretrain.args += ["--set", "phases.0.steps=3", "--set", "phases.1.steps=2", "--set", "checkpoint.every=5",
                      "--set", "logging.progress=false"]
    write_demo_corpus(tmp_path / "demo" / "raw")
    outcome = run_recipe(recipe, log=lambda *_: None)
    assert outcome == [(s.name, "ran") for s in recipe.stages]

    work = tmp_path / "demo"
    report = json.loads((work / "curate" / "report.json").read_text())
    assert report["malformed"] == {"bad_json": 1, "no_text": 1}  # rows the corpus plants on purpose
    tok = json.loads((work / "tokenizer" / "tokenizer.json").read_text())
    vocab = len(tok["model"]["vocab"]) + sum(1 for t in tok["added_tokens"] if t["id"] >= len(tok["model"]["vocab"]))
    hf = work / "pretrain" / "hf" / "latest"
    config = json.loads((hf / "config.json").read_text())
    assert config["vocab_size"] == vocab  # model sized by its tokenizer
    eos = next(t["id"] for t in tok["added_tokens"] if t["content"] == "<|end_of_text|>")
    assert config["eos_token_id"] == eos
    model = transformers.AutoModelForCausalLM.from_pretrained(hf)
    ids = transformers.AutoTokenizer.from_pretrained(hf)("오늘 서울의 날씨는", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()
    assert capsys.readouterr().out.strip()  # the generate stage printed a continuation
    assert run_recipe(recipe, log=lambda *_: None) == [(s.name, "skipped") for s in recipe.stages]
