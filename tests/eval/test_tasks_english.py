"""HellaSwag, ARC-Challenge (HF and original layouts), TruthfulQA mc1/mc2 and XWinograd:
lm-eval's preprocessing and prompts, the mc2 formula, and partial scoring for XWinograd."""

import json
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


def _tsv_row(lang, text, tokens, pron, cands):
    return "\t".join([lang, "original", "?", text, json.dumps(tokens), json.dumps(pron), json.dumps(cands)])


def test_xwinograd_release_tsv_and_every_context_recorded(tmp_path):
    """The release's dataset.tsv (yandex-research/crosslingual_winograd): the pronoun becomes the
    blank through its token offsets (the second `it` of a sentence stays), options in file order."""
    d = tmp_path / "xwinograd"
    d.mkdir()
    trophy = "The trophy doesn't fit into the brown suitcase because it is too large."
    sam = "Sam's drawing was hung just above Tina's and it did look much better with another one below it."
    rows = [
        _tsv_row("en", trophy, ["The", "trophy", "does", "n't", "fit", "into", "the", "brown", "suitcase", "because",
                                "it", "is", "too", "large", "."], ["it", [10, 11], ["it"]],
                 [["The trophy", [0, 2], ["The", "trophy"], True], ["suitcase", [8, 9], ["suitcase"], False]]),
        _tsv_row("jp", "猫が犬を追いかけた。それは速かった。", ["猫", "が", "犬", "を", "追いかけ", "た", "。", "それ", "は", "速かっ", "た", "。"],
                 ["それ", [7, 8], ["それ"]], [["猫", [0, 1], ["猫"], True], ["犬", [2, 3], ["犬"], False]]),
        _tsv_row("en", sam, ["Sam", "'s", "drawing", "was", "hung", "just", "above", "Tina", "'s", "and", "it", "did",
                             "look", "much", "better", "with", "another", "one", "below", "it", "."],
                 ["it", [10, 11], ["it"]], [["Sam's drawing", [0, 3], ["Sam", "'s", "drawing"], False],
                                            ["Tina's", [7, 9], ["Tina", "'s"], True]]),
        "en\toriginal\t?\tonly four columns",
    ]
    (d / "dataset.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    t = get_task("xwinograd_en")
    items = t.load(tmp_path)
    assert len(items) == 2 and len(t.bad_rows) == 1 and "dataset.tsv:4" in t.bad_rows[0]
    reqs = t.requests(items[0])
    assert [q.args for q in reqs] == [("The trophy doesn't fit into the brown suitcase because The trophy",
                                       " is too large."),
                                      ("The trophy doesn't fit into the brown suitcase because suitcase",
                                       " is too large.")]
    assert items[0]["gold"] == 0 and items[1]["gold"] == 1
    assert items[1]["rest"] == "did look much better with another one below it."
    jp = get_task("xwinograd_jp").load(tmp_path)
    assert len(jp) == 1 and jp[0]["prefixes"] == ["猫が犬を追いかけた。猫", "猫が犬を追いかけた。犬"]

    from kollm.eval.harness import EvalConfig, evaluate

    class Fixed:
        def loglikelihood(self, pairs):
            return [(-1.0 - i, False) for i in range(len(pairs))]

        def generate(self, reqs):
            return []

    res = evaluate(Fixed(), ["xwinograd_en"], EvalConfig(data_dir=str(tmp_path)), log=lambda m: None)
    rec = res["samples"]["xwinograd_en"][0]
    assert rec["prompt"] == [q.args[0] for q in reqs]  # both contexts, not only the first
    assert res["results"]["xwinograd_en"]["metrics"]["acc"]["value"] == 0.5


def test_every_row_rejected_says_so(tmp_path):
    d = tmp_path / "xwinograd"
    d.mkdir()
    (d / "dataset.tsv").write_text("en\toriginal\t?\tbroken\n"
                                   + _tsv_row("en", "It is.", ["It", "is", "."], ["it", [0, 1], ["it"]],
                                              [["a", [0, 1], ["a"], True], ["b", [0, 1], ["b"], True]]) + "\n")
    with pytest.raises(ValueError, match=r"dataset.tsv: 2 rows rejected: first error .*dataset.tsv:1: ValueError: 4 "
                                         r"tab-separated columns"):
        get_task("xwinograd_en").load(tmp_path)
    j = tmp_path / "xwinograd" / "data" / "en"
    j.mkdir(parents=True)
    (d / "dataset.tsv").unlink()
    (j / "test.jsonl").write_text(json.dumps({"sentence": "no blank here", "option1": "a", "option2": "b",
                                              "answer": "1"}) + "\n")
    with pytest.raises(ValueError, match="1 rows rejected: first error .*test.jsonl:1"):
        get_task("xwinograd_en").load(tmp_path)
