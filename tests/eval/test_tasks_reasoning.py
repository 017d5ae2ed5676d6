"""GSM8K (original jsonl on real rows, HF parquet), MATH, HRM8K and BBH: lm-eval's extraction
filters and Hendrycks' answer normalisation on known strings, and HRM8K's ko/en pairing."""

import pytest

from kollm.answers import is_equiv, last_boxed, strip_string
from kollm.eval.task import get_task
from kollm.eval.tasks.reasoning import extract_flexible, extract_strict, final_answer, gsm_clean


def strip(items):
    return [{k: v for k, v in it.items() if k != "_where"} for it in items]


def test_gsm8k_original_jsonl_and_hf_parquet(shared, fixtures):
    t = get_task("gsm8k")
    train = t.few_shot_items(shared)
    assert len(train) == 7473 and not t.bad_rows
    hf = get_task("gsm8k")
    assert strip(hf.load(fixtures)) == strip(train[:5]) and strip(hf.few_shot_items(fixtures)) == strip(train[5:8])


def test_gsm8k_prompt_and_scoring(fixtures):
    t = get_task("gsm8k")
    item, shot = t.load(fixtures)[0], t.few_shot_items(fixtures)[0]
    req = t.requests(item, [shot])[0]
    assert req.args[0] == (f"Question: {shot['question']}\nAnswer: {shot['answer']}\n\n"
                           f"Question: {item['question']}\nAnswer:")
    assert req.stop == ("Question:", "</s>", "<|im_end|>")
    assert gsm_clean(item["answer"]) == "72"
    assert t.process(item, [" 48/2 = 24, 48+24 = 72\n#### 72"]) == {"exact_match_strict": 1.0,
                                                                    "exact_match_flexible": 1.0}
    assert t.process(item, [" So she sold $72."]) == {"exact_match_strict": 0.0, "exact_match_flexible": 1.0}
    assert t.process(item, [" #### 1,072"]) == {"exact_match_strict": 0.0, "exact_match_flexible": 0.0}


def test_extractors():
    assert extract_strict("x #### -1,234.5 y") == "-1,234.5"
    assert extract_strict("no marker 5") == "[invalid]"
    assert extract_flexible("first 12 then 7") == "7"
    assert extract_flexible("cost $1,200.") == "$1,200."
    assert extract_flexible("nothing") == "[invalid]"


def test_math_normalisation():
    # the last box, its braces balanced, and its content without the command
    assert last_boxed("a \\boxed{\\frac{1}{2}} b \\boxed{x^{2}}") == "x^{2}"
    assert last_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert strip_string("\\dfrac12") == "\\frac{1}{2}" == strip_string("0.5") == strip_string("1/2")
    assert strip_string("x = 3") == "3" and strip_string("90^\\circ") == "90"
    assert is_equiv("\\left( 1, 2 \\right)", "(1,2)") and not is_equiv("3", "4")
    assert final_answer("so \\boxed{42}.") == "42" and final_answer("it is 1,024 apples") == "1024"


def test_math_loader_and_scoring(fixtures):
    t = get_task("math")
    items = t.load(fixtures)
    assert [it["answer"] for it in items] == ["72", "10", "5"]
    assert t.process(items[0], [" 72"]) == {"exact_match": 1.0}
    cot = get_task("math_cot")
    req = cot.requests(items[0])[0]
    assert req.chat and req.args[0].endswith("Put your answer within \\boxed{}. Let's think step by step.")
    assert cot.process(items[0], ["... so \\boxed{72}"]) == {"exact_match": 1.0}


def test_hrm8k_languages_pair(fixtures):
    ko, en = get_task("hrm8k_ko").load(fixtures), get_task("hrm8k_en").load(fixtures)
    assert [a["pair_id"] for a in ko] == [b["pair_id"] for b in en] == ["GSM8K:0", "GSM8K:1", "GSM8K:2"]
    assert ko[0]["question"] == "(ko) " + en[0]["question"]
    t = get_task("hrm8k_ko")
    assert t.requests(ko[0])[0].args[0].startswith("문제: (ko) ")
    assert t.process(ko[0], ["답은 \\boxed{72}"]) == {"exact_match": 1.0}
    assert t.process(ko[0], ["72.0 입니다"]) == {"exact_match": 1.0}
    # chat=true (`--task-arg hrm8k_ko:chat=true`, the demo's chat model): the question alone, a user turn
    [req] = get_task("hrm8k_ko", chat=True).requests(ko[0])
    assert req.chat and req.args[0] == ko[0]["question"]


def test_bbh_original_json(fixtures):
    t = get_task("bbh")
    items = t.load(fixtures)
    assert len(items) == 3 and items[0]["subtask"] == "multistep_arithmetic_two"
    assert t.requests(items[0])[0].args[0] == f"Q: {items[0]['input']}\nA:"
    assert t.process(items[0], [" 72 "]) == {"exact_match": 1.0}


def test_bad_jsonl_line_counted(tmp_path, shared):
    d = tmp_path / "gsm8k"
    d.mkdir()
    lines = (shared / "gsm8k/train.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    lines.insert(1, "{not json")
    lines.append('{"question": "no answer"}')
    (d / "test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    t = get_task("gsm8k")
    assert len(t.load(tmp_path)) == 3
    assert len(t.bad_rows) == 2 and t.bad_rows[0].startswith(f"{d / 'test.jsonl'}:2:")
    assert "KeyError" in t.bad_rows[1] and ":5:" in t.bad_rows[1]


@pytest.mark.parametrize("name", ["gsm8k_cot"])
def test_trillion_cot_prompt(name, fixtures):
    t = get_task(name)
    item = t.load(fixtures)[0]
    assert t.requests(item)[0].args[0] == (f"Q: {item['question']}\n"
                                           "Put your answer within \\boxed{}. Let's think step by step.")
    assert t.process(item, ["\\boxed{72}"]) == {"exact_match": 1.0}


def test_bbh_cot_uses_the_original_cot_prompt(fixtures, tmp_path):
    t = get_task("bbh_cot")
    item = t.load(fixtures)[0]
    ctx = t.requests(item)[0].args[0]
    assert ctx.startswith("Q: ((-5 + 9 * -4 - 0)") and "So the answer is 123." in ctx
    assert ctx.endswith(f"\n\nQ: {item['input']}\nA: Let's think step by step.")
    assert t.process(item, ["48 + 24 = 72. So the answer is 72."]) == {"exact_match": 1.0}
    assert t.process(item, ["the answer is 71, not 72"]) == {"exact_match": 0.0}
    (tmp_path / "bbh").mkdir()
    (tmp_path / "bbh" / "multistep_arithmetic_two.json").write_text(
        (fixtures / "bbh" / "multistep_arithmetic_two.json").read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="cot-prompts"):
        get_task("bbh_cot").load(tmp_path)
