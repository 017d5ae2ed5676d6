"""MMLU (original CSVs on real rows and the cais/mmlu parquet layout), KMMLU, Global-MMLU,
HAE-RAE and GPQA loaders: answers decoded per schema, lm-eval's prompt strings, per-subject
first-n few-shot for MMLU."""

import csv
import random
import shutil

import pytest

from kollm.eval.task import get_task


def strip(items):
    return [{k: v for k, v in it.items() if k != "_where"} for it in items]


def test_mmlu_original_csv_and_hf_parquet_agree(shared, fixtures):
    t = get_task("mmlu")
    orig = t.load(shared)  # dev only in the shared copy: scored as the fallback split
    assert len(orig) == 57 * 5 and not t.bad_rows
    by_subject = {(it["subject"], it["question"]): it for it in orig}
    hf = get_task("mmlu").load(fixtures) + get_task("mmlu").few_shot_items(fixtures)
    assert len(hf) == 10
    for it in strip(hf):
        assert strip([by_subject[(it["subject"], it["question"])]])[0] == it


def test_mmlu_headerless_letter_answer_csv(tmp_path):
    d = tmp_path / "mmlu" / "data" / "test"
    d.mkdir(parents=True)
    with open(d / "virology_test.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["What is a virus?", "a cell", "an agent", "a plant", "a rock", "B"],
                                 ["Pick D", "1", "2", "3", "4", "D"]])
    t = get_task("mmlu")
    items = t.load(tmp_path)
    assert [it["gold"] for it in items] == [1, 3] and items[0]["subject"] == "virology"


def test_mmlu_prompt_and_first_n_shots(fixtures):
    t = get_task("mmlu")
    items, pool = t.load(fixtures), t.few_shot_items(fixtures)
    item = items[0]
    shots = t.select_fewshot(item, pool, 5, random.Random(0))
    same = [p for p in pool if p["subject"] == item["subject"]]
    assert shots == same[:5] and len(shots) == 2  # first_n, same subject, as many as exist
    ctx = t.requests(item, shots)[0].args[0]
    assert ctx.startswith("The following are multiple choice questions (with answers) about abstract algebra.\n\n")
    assert ctx.endswith(f"{item['question'].strip()}\nA. {item['options'][0]}\nB. {item['options'][1]}\n"
                        f"C. {item['options'][2]}\nD. {item['options'][3]}\nAnswer:")
    assert ctx.count("\nAnswer: ") == 2  # two shots with their letter
    assert [r.args[1] for r in t.requests(item)] == [" A", " B", " C", " D"]


def test_kmmlu_one_based_answer_and_cue(fixtures):
    t = get_task("kmmlu")
    items = t.load(fixtures)
    mmlu = get_task("mmlu").load(fixtures) + get_task("mmlu").few_shot_items(fixtures)
    gold = {m["question"]: m["gold"] for m in mmlu}
    assert all(gold[it["question"]] == it["gold"] for it in items) and len(items) == 8
    assert t.requests(items[0])[0].args[0].endswith("\n정답：")
    assert items[0]["subject"] == "Abstract-Algebra" and len(t.few_shot_items(fixtures)) == 2


def test_global_mmlu_letters_and_pair_ids(fixtures):
    en, ko = get_task("global_mmlu_en").load(fixtures), get_task("global_mmlu_ko").load(fixtures)
    assert len(en) == 10 and len(ko) == 9
    assert {it["sample_id"] for it in ko} < {it["sample_id"] for it in en}
    assert get_task("global_mmlu_ko").parallel_key == "sample_id"
    with pytest.raises(FileNotFoundError, match="Global-MMLU/ja"):
        get_task("global_mmlu_ja").load(fixtures)


def test_haerae_labels(fixtures):
    t = get_task("haerae")
    items = t.load(fixtures)
    mm = get_task("mmlu").few_shot_items(fixtures) + get_task("mmlu").load(fixtures)
    gold = {m["question"]: m["gold"] for m in mm}
    assert len(items) == 4 and all(gold[it["query"].split("\n(A)")[0]] == it["gold"] for it in items)
    req = t.requests(items[0])
    assert [r.args[1] for r in req] == [" (A)", " (B)", " (C)", " (D)", " (E)"]
    assert req[0].args[0] == items[0]["query"]


def test_gpqa_shuffle_is_deterministic_and_keeps_the_answer(fixtures, tmp_path):
    a, b = get_task("gpqa_main").load(fixtures), get_task("gpqa_main").load(fixtures)
    assert strip(a) == strip(b)
    rows = list(csv.DictReader(open(fixtures / "gpqa" / "gpqa_main.csv", encoding="utf-8")))
    for it, r in zip(a, rows):
        assert it["options"][it["gold"]] == r["Correct Answer"].strip()
    assert sorted({it["gold"] for it in a}) != [3]  # not always last: really shuffled
    ctx = get_task("gpqa_main").requests(a[0])[0].args[0]
    assert ctx.startswith("What is the correct answer to this question:") and "\nChoices:\n(A) " in ctx
    shutil.copytree(fixtures / "gpqa", tmp_path / "gpqa" / "dataset")
    assert strip(get_task("gpqa_main").load(tmp_path)) == strip(a)  # the original zip's folder


def test_haerae_shots_come_from_the_test_split_without_the_item(fixtures):
    t = get_task("haerae")
    items, pool = t.load(fixtures), t.few_shot_items(fixtures)
    shots = t.select_fewshot(items[0], pool, 3, random.Random(1))
    assert len(shots) == 3 and strip([items[0]])[0] not in strip(shots)


def test_gpqa_k_shot_draws_from_its_own_rows_with_lm_evals_n_shot_prompt(fixtures):
    """Trillion's suite asks gpqa_main:4; GPQA has one split, so shots come from it (lm-eval's
    gpqa_main_n_shot: fewshot_split train, the sampler skips the item) with that task's prompt."""
    t = get_task("gpqa_main")
    items, pool = t.load(fixtures), t.few_shot_items(fixtures)
    assert strip(pool) == strip(items)
    shots = t.select_fewshot(items[0], pool, 2, random.Random(0))
    assert len(shots) == 2 and items[0] not in shots
    ctx = t.requests(items[0], shots)[0].args[0]
    assert ctx.startswith("Here are some example questions from experts. Answer the final question yourself, "
                          "following the format of the previous questions exactly.\nQuestion: ")
    assert ctx.count("Question: ") == 3 and ctx.endswith("\n(D) " + items[0]["options"][3] + "\nAnswer:")
    for s in shots:
        assert f"Question: {s['question']}\nChoices:\n(A) {s['options'][0]}" in ctx
        assert t.n_shot_text(s) + f" ({'ABCD'[s['gold']]})\n\n" in ctx
    assert t.requests(items[0])[0].args[0].startswith("What is the correct answer")  # 0-shot unchanged
