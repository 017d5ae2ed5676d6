"""recipes/real-small-ko.yaml (docs/walkthrough.md) plans with `kollm run --dry-run` on a tiny random
Llama directory and data in the layout scripts/walkthrough_data.py writes, with every named input
present: so the recipe, its stage configs and its vars cannot rot between walkthrough runs."""

import json
from pathlib import Path

from kollm.recipe import COMPUTE, dry_run, format_dry_run, load_recipe

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "real-small-ko.yaml"
TEXT = ["서울은 대한민국의 수도이다.", "The quick brown fox jumps over the lazy dog.", "한국어 문장입니다."] * 10


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def test_real_small_ko_dry_run_plans_every_stage(tmp_path, write_tiny_llama):
    model = write_tiny_llama(tmp_path / "model", TEXT, ["<pad>", "<s>", "</s>"], vocab_size=300, hidden=32,
                             max_positions=1024, init_std=0.02)
    data = tmp_path / "data"
    _jsonl(data / "cpt.jsonl", [{"text": t, "lang": "ko"} for t in TEXT])
    chat = [{"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "답은 2입니다."}]}]
    _jsonl(data / "sft/train.jsonl", chat * 3)
    _jsonl(data / "sft/heldout.jsonl", chat)
    pair = {"prompt": [{"role": "user", "content": "1+1?"}], "chosen": [{"role": "assistant", "content": "2"}],
            "rejected": [{"role": "assistant", "content": "3"}]}
    _jsonl(data / "dpo/train.jsonl", [pair] * 24)
    _jsonl(data / "dpo/heldout.jsonl", [pair] * 2)
    (tmp_path / "eval").mkdir()

    recipe = load_recipe(RECIPE, [f"workdir={tmp_path / 'run'}", f"vars.model={model}", f"vars.data={data}",
                                  f"vars.eval_data={tmp_path / 'eval'}", "vars.cpt_steps=3", "vars.sft_steps=2",
                                  "vars.eval_limit=5", "vars.eval_after_limit=3"])
    d = dry_run(recipe, defaults={"mfu": 0.4, "gen_mfu": 0.1})
    assert d["stops_at"] is None  # every named input is there
    stages = {s["name"]: s for s in d["stages"]}
    assert list(stages) == ["eval-before", "tokenizer", "shards", "cpt", "sft", "dpo", "slerp", "eval-after"]
    assert all(s["status"] == "would run" for s in d["stages"])
    for s in recipe.stages:
        if s.run in COMPUTE:
            assert stages[s.name]["plan"]["flops"] > 0, s.name
    assert "not planned" not in format_dry_run(d)
    # the vars reach the stage configs: steps × the configs' 2,048 tokens, the pairs counted in the file
    (cpt,) = stages["cpt"]["plan"]["parts"]
    (sft,) = stages["sft"]["plan"]["parts"]
    assert (cpt["tokens"], sft["tokens"]) == (3 * 2048, 2 * 2048)
    assert stages["dpo"]["plan"]["pairs"] == 24 and stages["dpo"]["plan"]["parts"][1]["steps"] == 3  # ⌈24/8⌉
    assert stages["eval-before"]["plan"]["requests"] > stages["eval-after"]["plan"]["requests"] > 0  # 5 vs 3 a task
