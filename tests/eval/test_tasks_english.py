"""HellaSwag, ARC-Challenge (HF and original layouts), TruthfulQA mc1/mc2 and XWinograd:
lm-eval's preprocessing and prompts, the mc2 formula, and partial scoring for XWinograd."""

import math
import shutil

import pytest

from kollm.eval.task import get_task
from kollm.eval.tasks.english import TQA_PROMPT


def strip(items):
    return [{k: v for k, v in it.items() if k != "_where"} for it in items]


def test_hellaswag_preprocessing():
    t = get_task("hellaswag")
    item = t.convert({"activity_label": "Baking cookies", "ctx_a": "A woman [title] mixes dough.", "ctx_b": "she",
                      "endings": ["puts it in  the oven. [step]", "eats it."], "label": "0"})
    assert item["query"] == "Baking cookies: A woman. mixes dough. She"
    assert item["choices"] == ["puts it in the oven. ", "eats it."] and item["gold"] == 0


def test_hellaswag_fixture(fixtures):
    items = get_task("hellaswag").load(fixtures)
    assert len(items) == 3 and items[0]["query"].startswith("Korean: 모자를 쓴 투수가") and items[0]["gold"] == 3


def test_arc_hf_and_original_layouts_agree(fixtures, tmp_path):
    hf = get_task("arc_challenge").load(fixtures)
    shutil.copytree(fixtures / "ARC-V1-Feb2018-2", tmp_path / "ARC-V1-Feb2018-2")
    orig = get_task("arc_challenge").load(tmp_path)
    assert strip(hf) == strip(orig) and len(hf) == 3
    assert hf[0]["query"].startswith("Question: ") and hf[0]["query"].endswith("\nAnswer:")


def test_truthfulqa_prompt_mc1_and_mc2(fixtures):
    mc1, mc2 = get_task("truthfulqa_mc1"), get_task("truthfulqa_mc2")
    item = mc1.load(fixtures)[0]
    assert item["query"].startswith("Q: What is human life expectancy") and item["gold"] == 0
    assert item["query"] == f"{TQA_PROMPT}\n\nQ: {item['question']}\nA:" and item["question"].startswith("Find all c")
    assert mc1.process(item, [(-1.0, False), (-0.5, False), (-2.0, False), (-3.0, False)]) == {"acc": 0.0}
    it2 = mc2.load(fixtures)[0]
    assert it2["labels"] == [1, 1, 0, 0]
    lls = [-1.0, -2.0, -0.5, -3.0]
    p = [math.exp(x) for x in lls]
    assert mc2.process(it2, [(x, False) for x in lls])["acc"] == pytest.approx((p[0] + p[1]) / sum(p))


def test_xwinograd_partial_scoring(fixtures):
    t = get_task("xwinograd_en")
    item = t.load(fixtures)[0]
    reqs = t.requests(item)
    assert reqs[0].args == ("전쟁이 시작되었다. 병사들이 집으로 돌아왔다.", " 결과")
    assert reqs[1].args == ("전쟁이 시작되었다. 병사들이 전투에 파견되었다.", " 결과")
    assert item["gold"] == 1
    assert t.process(item, [(-5.0, False), (-4.0, False)]) == {"acc": 1.0}
