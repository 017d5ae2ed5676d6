"""The README's first command end to end: the tiny-demo recipe on the embedded corpus, from raw
text through pretraining, SFT, DPO, the SLERP merge, GRPO and evaluation to the report, with every
training stage shortened by --set overrides (the full demo takes minutes on 2 cores), and each
post-training stage's effect on held-out items (kollm.demo_scores) within loose bounds: the
shortened stages still learn, less than the full demo does (README: the full demo's table)."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from kollm.demo_corpus import write_demo_corpus, write_demo_posttrain
from kollm.model.config import get_preset
from kollm.model.hf import config_from_hf
from kollm.recipe import load_recipe, run_recipe

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny-demo.yaml"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])  # one seed in CI (minutes); seeds measured: see the bounds below
def test_demo_recipe_end_to_end(tmp_path, capsys, seed):
    transformers = pytest.importorskip("transformers")
    recipe = load_recipe(RECIPE)
    recipe.workdir = str(tmp_path / "demo")
    short = {
        "pretrain": ["--set", "phases.0.steps=100", "--set", "phases.1.steps=20", "--set", "checkpoint.every=60"],
        "sft": ["--set", "phases.0.steps=60", "--set", "validation.every=0", "--set", "checkpoint.every=0"],
        "dpo": ["--set", "dpo.epochs=1", "--set", "validation.every=0", "--set", "checkpoint.every=0"],
        "grpo": ["--set", "phases.0.steps=10", "--set", "validation.every=5", "--set", "data.val_size=16",
                 "--set", "checkpoint.every=0"],
        "eval": ["--limit", "20"],
        "effects": ["--limit", "20"],
    }
    for stage in recipe.stages:
        if stage.name in short:
            trains = stage.name in ("pretrain", "sft", "dpo", "grpo")
            stage.args += short[stage.name] + (["--set", "logging.progress=false", "--set", f"seed={seed}"]
                                               if trains else [])
    write_demo_corpus(tmp_path / "demo" / "raw", n_docs=600, seed=seed)
    write_demo_posttrain(tmp_path / "demo" / "posttrain", n_train=400, n_val=40, seed=seed + 1)
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
    # the shapes the post-training dry runs plan with (the vocabulary: the full corpus's, this one is smaller)
    assert config_from_hf(config).replace(vocab_size=910, bos_token_id=904, eos_token_id=905) == get_preset(
        "tiny-demo-nomtp")
    model = transformers.AutoModelForCausalLM.from_pretrained(hf)
    ids = transformers.AutoTokenizer.from_pretrained(hf)("오늘 서울의 날씨는", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()
    assert capsys.readouterr().out.strip()  # the generate stages printed a continuation

    # post-training: each stage trained from the one before and exported a model transformers loads
    for stage in ("sft", "dpo", "grpo"):
        rows = [json.loads(line) for line in (work / stage / "metrics.jsonl").read_text().splitlines()]
        assert rows and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows), stage
    dpo_first = json.loads((work / "dpo" / "metrics.jsonl").read_text().splitlines()[0])
    # policy == reference at step 1: DPO's term is ln 2, RPO adds dpo.rpo_alpha × the chosen replies' NLL
    alpha = yaml.safe_load((RECIPE.parent / "tiny-demo-dpo.yaml").read_text())["dpo"]["rpo_alpha"]
    # (float32 sums of a loss near 10: 1e-4 absolute is some ulps of it)
    assert dpo_first["loss"] - alpha * dpo_first["chosen_nll"] == pytest.approx(0.6931471805599453, abs=1e-4)
    # each stage's effect on held-out items (the full demo's numbers: README). This shortened run
    # (pretraining 120 steps, n = 20) learns less: seed 0 gave SFT 0.25 (0.20 with twice the SFT
    # steps) and DPO preference accuracy 0.65 (0.525 with half an epoch); seed 1, on the earlier
    # DPO settings, SFT 0.50 and 0.70; seed 0 with RPO (α 8, lr 5e-4; 2026-12-07) SFT 0.25, DPO
    # preference accuracy 0.62, greedy replies = chosen 0.05 -> 0.15, GRPO 0.00 -> 0.00 (the
    # recipe's α 2 / lr 2e-4: SFT 0.25, DPO preference accuracy 0.55 (22 of 40), greedy replies =
    # chosen 0.05 -> 0.20, GRPO 0.00 -> 0.00). Bounds below those.
    fx = json.loads((work / "effects" / "effects.json").read_text())
    s = fx["models"]
    assert s["base"]["sft"] <= 0.1 and s["SFT"]["sft"] >= 0.15, s  # SFT: from ≈ 0 to some answers right
    # DPO: held-out preference accuracy, and RPO keeps the greedy replies = chosen from falling
    assert fx["dpo_preference_accuracy"] >= 0.5, fx
    assert s["DPO"]["dpo"] >= s["SFT"]["dpo"] - 0.05, s
    for task in ("sft", "dpo", "grpo"):  # the merge sits between (or near) its parents
        assert s["merged"][task] >= min(s["SFT"][task], s["DPO"][task]) - 0.2, (task, s)
    # GRPO: no collapse (the held-out gain of issue 22 is not reached by the shortened run, nor the full one);
    # grpo.keep_best: the export is the best validation step's policy (ties: the later)
    best = max(v for _, v in fx["grpo_validation"])
    assert s["GRPO"]["grpo"] >= s["merged"]["grpo"] - 0.1, fx
    kept = max(step for step, v in fx["grpo_validation"] if v == best)
    assert fx["grpo_export"]["best_step"] == kept and fx["grpo_export"]["export"] == f"step-{kept:08d}", fx
    assert (work / "grpo" / "hf" / "latest").resolve().name == f"step-{kept:08d}"
    merged = work / "merge" / "model"
    assert (merged / "mergekit_config.yml").is_file()
    assert f"model.init_from={merged}" in json.loads((work / "grpo" / "run.json").read_text())["argv"]
    final = work / "grpo" / "hf" / "latest"
    tokenizer = transformers.AutoTokenizer.from_pretrained(final)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "7 더하기 5는 얼마입니까?"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt.count("<|begin_of_text|>") == 1 and prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    results = json.loads((work / "eval" / "results.json").read_text())
    assert set(results["results"]) == {"hrm8k_en", "hrm8k_ko"} and results["results"]["hrm8k_ko"]["n"] == 20
    assert results["consistency"]["hrm8k_en:hrm8k_ko"]["pairs"] == 20
    final_gen = json.loads((work / "grpo" / "hf" / "latest" / "generation_config.json").read_text())
    assert eos in final_gen["eos_token_id"] and len(final_gen["eos_token_id"]) == 2  # the end of turn stops a reply
    # the report covers every stage that ran before it
    page = (work / "report" / "report.md").read_text()
    for stage in ("curate", "tokenizer", "pretrain", "sft", "dpo", "grpo", "eval"):
        assert f"| {stage} |" in page, stage
    assert "Training (dpo)" in page and "reward_accuracy" in page and "P(ko✓" in page
    assert "What each stage did, on held-out items" in page
    assert (work / "report" / "report.html").stat().st_size > 10_000
    assert run_recipe(recipe, log=lambda *_: None) == [(s.name, "skipped") for s in recipe.stages]
