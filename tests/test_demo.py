"""The README's first command end to end: the tiny-demo recipe on the embedded corpus, from raw
text through pretraining, SFT, DPO, the SLERP merge, GRPO and evaluation to the report, with every
training stage shortened by --set overrides (the full demo takes minutes on 2 cores)."""

import json
from pathlib import Path

import pytest
import torch

from kollm.demo_corpus import write_demo_corpus, write_demo_posttrain
from kollm.model.config import get_preset
from kollm.model.hf import config_from_hf
from kollm.recipe import load_recipe, run_recipe

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny-demo.yaml"


def test_demo_recipe_end_to_end(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    recipe = load_recipe(RECIPE)
    recipe.workdir = str(tmp_path / "demo")
    pretrain = next(s for s in recipe.stages if s.name == "pretrain")
    pretrain.args += ["--set", "phases.0.steps=3", "--set", "phases.1.steps=2", "--set", "checkpoint.every=5",
                      "--set", "logging.progress=false"]
    short = {
        "sft": ["--set", "phases.0.steps=3", "--set", "validation.every=0", "--set", "checkpoint.every=0"],
        "dpo": ["--set", "dpo.epochs=0.04", "--set", "validation.every=0", "--set", "checkpoint.every=0"],
        "grpo": ["--set", "phases.0.steps=2", "--set", "validation.every=0", "--set", "data.val_size=4",
                 "--set", "checkpoint.every=0", "--set", "grpo.max_new_tokens=8"],
        "eval": ["--limit", "6"],
    }
    for stage in recipe.stages:
        if stage.name in short:
            stage.args += short[stage.name] + (["--set", "logging.progress=false"] if stage.name != "eval" else [])
    write_demo_corpus(tmp_path / "demo" / "raw")
    write_demo_posttrain(tmp_path / "demo" / "posttrain", n_train=120, n_val=12)
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
    # the preset the post-training stages' dry runs plan with (recipes/tiny-demo.yaml) is this model
    assert config_from_hf(config) == get_preset("tiny-demo-nomtp")
    model = transformers.AutoModelForCausalLM.from_pretrained(hf)
    ids = transformers.AutoTokenizer.from_pretrained(hf)("오늘 서울의 날씨는", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()
    assert capsys.readouterr().out.strip()  # the generate stages printed a continuation

    # post-training: each stage trained from the one before and exported a model transformers loads
    for stage in ("sft", "dpo", "grpo"):
        rows = [json.loads(line) for line in (work / stage / "metrics.jsonl").read_text().splitlines()]
        assert rows and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows), stage
    dpo_first = json.loads((work / "dpo" / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(dpo_first["loss"] - 0.6931471805599453) < 1e-5  # policy == reference at step 1: ln 2
    merged = work / "merge" / "model"
    assert (merged / "mergekit_config.yml").is_file()
    assert f"model.init_from={merged}" in json.loads((work / "grpo" / "run.json").read_text())["argv"]
    final = work / "grpo" / "hf" / "latest"
    tokenizer = transformers.AutoTokenizer.from_pretrained(final)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "7 더하기 5는 얼마입니까?"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt.count("<|begin_of_text|>") == 1 and prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    results = json.loads((work / "eval" / "results.json").read_text())
    assert set(results["results"]) == {"hrm8k_en", "hrm8k_ko"} and results["results"]["hrm8k_ko"]["n"] == 6
    assert results["consistency"]["hrm8k_en:hrm8k_ko"]["pairs"] == 6
    # the report covers every stage that ran before it
    page = (work / "report" / "report.md").read_text()
    for stage in ("curate", "tokenizer", "pretrain", "sft", "dpo", "grpo", "eval"):
        assert f"| {stage} |" in page, stage
    assert "Training (dpo)" in page and "reward_accuracy" in page and "P(ko✓" in page
    assert (work / "report" / "report.html").stat().st_size > 10_000
    assert run_recipe(recipe, log=lambda *_: None) == [(s.name, "skipped") for s in recipe.stages]
