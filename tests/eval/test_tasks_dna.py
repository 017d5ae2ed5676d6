"""DNA 1.0's BELEBELE, KMMLU-Hard and CSAT-QA: each release's schema read, lm-eval's prompt string
built (checked by hand here; equality with lm-eval's own configs is test_lmeval_parity_dna.py),
malformed rows counted, and the tasks in the `dna` suite."""

import json

import pytest

from kollm.eval.suites import SUITES
from kollm.eval.task import get_task

BELEBELE = [{"link": "x", "question_number": 1, "flores_passage": "서울은 한국의 수도이다.", "question": " 한국의 수도는? ",
             "mc_answer1": "부산", "mc_answer2": "서울", "mc_answer3": "대구", "mc_answer4": "인천",
             "correct_answer_num": "2", "dialect": "kor_Hang", "ds": "2023-05-03"},
            {"link": "y", "question_number": 2, "flores_passage": "P2", "question": "Q2", "mc_answer1": "a",
             "mc_answer2": "b", "mc_answer3": "c", "mc_answer4": "d", "correct_answer_num": "4",
             "dialect": "kor_Hang", "ds": "2023-05-03"},
            {"flores_passage": "P3", "question": "Q3", "mc_answer1": "a", "mc_answer2": "b", "mc_answer3": "c",
             "mc_answer4": "d", "correct_answer_num": "5"}]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def test_belebele_prompt_and_first_n_shots(tmp_path):
    write_jsonl(tmp_path / "belebele" / "kor_Hang.jsonl", BELEBELE)
    t = get_task("belebele_ko")
    items = t.load(tmp_path)
    assert len(items) == 2 and len(t.bad_rows) == 1 and "kor_Hang.jsonl:3" in t.bad_rows[0]
    reqs = t.requests(items[0])
    assert reqs[0].args == ("P: 서울은 한국의 수도이다.\nQ: 한국의 수도는?\nA: 부산\nB: 서울\nC: 대구\nD: 인천\nAnswer:", " A")
    assert [q.args[1] for q in reqs] == [" A", " B", " C", " D"] and items[0]["gold"] == 1
    assert t.process(items[0], [(-3.0, False), (-1.0, True), (-2.0, False), (-4.0, False)])["acc"] == 1.0
    pool = t.few_shot_items(tmp_path)
    shots = t.select_fewshot(items[0], pool, 1, None)
    assert shots == [items[1]]  # the first row is the item itself: skipped, as lm-eval's first_n
    assert t.requests(items[0], shots)[0].args[0].startswith("P: P2\nQ: Q2\nA: a\nB: b\nC: c\nD: d\nAnswer: D\n\nP: ")


def test_kmmlu_hard_letters_or_numbers(tmp_path):
    d = tmp_path / "KMMLU-HARD" / "data"
    d.mkdir(parents=True)
    (d / "math-hard-test.csv").write_text("question,answer,A,B,C,D,Category\n 1+1은? ,B,1,2,3,4,math\n"
                                          "2+2는?,4,1,2,3,4,math\n3+3은?,E,1,2,3,6,math\n", encoding="utf-8")
    (d / "math-hard-dev.csv").write_text("question,answer,A,B,C,D,Category\n0+1은?,A,1,2,3,4,math\n", encoding="utf-8")
    t = get_task("kmmlu_hard")
    items = t.load(tmp_path)
    assert [it["gold"] for it in items] == [1, 3] and items[0]["subject"] == "math" and len(t.bad_rows) == 1
    shots = t.select_fewshot(items[0], t.few_shot_items(tmp_path), 1, __import__("random").Random(0))
    assert t.requests(items[0], shots)[0].args == ("0+1은?\nA. 1\nB. 2\nC. 3\nD. 4\n정답： A\n\n1+1은?\nA. 1\nB. 2\nC. 3\nD. 4"
                                                   "\n정답：", " A")


def test_csatqa_prompt_and_categories(tmp_path):
    row = {"question": "밑줄 친 부분의 의미는?", "context": "지문입니다.", **{f"option#{i}": f"선택{i}" for i in range(1, 6)},
           "gold": 3, "Category": "RCS", "Human_Peformance": 0.5}
    write_jsonl(tmp_path / "csatqa" / "data" / "csatqa.jsonl", [row, {**row, "gold": 1, "Category": "GR"},
                                                                 {**row, "gold": 7}])
    t = get_task("csatqa")
    items = t.load(tmp_path)
    assert len(items) == 2 and len(t.bad_rows) == 1
    reqs = t.requests(items[0])
    assert reqs[0].args[0] == ("다음을 읽고 정답으로 알맞은 것을 고르시요.\n### Context: 지문입니다.\n### Question: 밑줄 친 부분의 의미는?\n"
                               "### Options:\n(1) 선택1\n(2) 선택2\n(3) 선택3\n(4) 선택4\n(5) 선택5\n### Answer: 주어진 문제의 정답은")
    assert [q.args[1] for q in reqs] == [" (1)", " (2)", " (3)", " (4)", " (5)"] and items[0]["gold"] == 2
    lls = [(-5.0, False), (-4.0, False), (-1.0, True), (-3.0, False), (-2.0, False)]
    m = [t.process(items[0], lls), t.process(items[1], lls)]
    agg = t.aggregate(m, bootstrap_iters=10)
    assert agg["acc"]["value"] == 0.5 and agg["category/RCS"]["value"] == 1.0 and agg["category/GR"]["value"] == 0.0


def test_dna_suite_has_them():
    assert {"kmmlu_hard:5", "belebele_ko:0", "csatqa:0", "mmlu_pro:5"} <= set(SUITES["dna"])


def test_all_rows_rejected(tmp_path):
    write_jsonl(tmp_path / "csatqa" / "x.jsonl", [{"question": "q"}])
    with pytest.raises(ValueError, match="1 rows rejected: first error .*x.jsonl:1"):
        get_task("csatqa").load(tmp_path)


def pro_rows():
    mk = lambda i, cat, q, ans, cot: {"question_id": i, "question": q, "options": ["1", " 2 ", "3", "4", "5"],  # noqa: E731
                                      "answer": ans, "answer_index": "ABCDE".find(ans), "cot_content": cot,
                                      "category": cat, "src": "x"}
    val = [mk(0, "math", "1+1?", "B", "A: Let's think step by step. 1+1=2. The answer is (B)."),
           mk(1, "law", "Is it legal?", "A", "A: Let's think step by step. Yes. The answer is (A)."),
           mk(2, "math", "2+1?", "C", "A: Let's think step by step. 2+1=3. The answer is (C).")]
    test = [mk(10, "math", "3+1?", "D", ""), mk(11, "math", "0+1?", "A", ""), mk(12, "law", "Q?", "Z", "")]
    return test, val


def write_pro(root):
    import pyarrow as pa
    import pyarrow.parquet as pq

    test, val = pro_rows()
    d = root / "MMLU-Pro" / "data"
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(test), d / "test-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(val), d / "validation-00000-of-00001.parquet")


def test_mmlu_pro_prompt_shots_and_extraction(tmp_path):
    write_pro(tmp_path)
    t = get_task("mmlu_pro")
    items = t.load(tmp_path)
    assert len(items) == 2 and len(t.bad_rows) == 1  # answer "Z" is no option's letter
    shots = t.select_fewshot(items[0], t.few_shot_items(tmp_path), 5, None)
    assert [s["question"] for s in shots] == ["1+1?", "2+1?"]  # the same category, file order
    ctx = t.requests(items[0], shots[:1])[0].args[0]
    assert ctx == ("The following are multiple choice questions (with answers) about math. Think step by step and then "
                   "finish your answer with \"the answer is (X)\" where X is the correct letter choice.\n"
                   "Question:\n1+1?\nOptions:\nA. 1\nB. 2\nC. 3\nD. 4\nE. 5\nAnswer: Let's think step by step. "
                   "1+1=2. The answer is (B).\n\n"
                   "Question:\n3+1?\nOptions:\nA. 1\nB. 2\nC. 3\nD. 4\nE. 5\nAnswer: Let's think step by step.")
    assert t.requests(items[0])[0].stop == ("Question:",)
    m = t.process(items[0], ["3+1=4 so the answer is (D). Or the answer is (A)."])  # the first match counts
    assert m == {"exact_match": 1.0, "category/math": 1.0}
    assert t.process(items[0], ["the answer is D"])["exact_match"] == 1.0
    assert t.process(items[0], ["I think D"])["exact_match"] == 0.0


def test_mmlu_pro_prompts_equal_lm_evals(tmp_path):
    lm_eval = pytest.importorskip("lm_eval")
    import os
    from pathlib import Path

    from lm_eval.tasks import TaskManager, get_task_dict

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    write_pro(tmp_path)
    src = Path(lm_eval.__file__).parent / "tasks" / "mmlu_pro" / "mmlu_pro_math.yaml"
    d = tmp_path / "MMLU-Pro" / "data"
    inc = tmp_path / "tasks"
    inc.mkdir()
    (inc / "p.yaml").write_text(
        f"include: {src}\ntask: mmlu_pro_kollm_parity\ndataset_path: parquet\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    test: {d / 'test-00000-of-00001.parquet'}\n"
        f"    validation: {d / 'validation-00000-of-00001.parquet'}\ntag: []\n", encoding="utf-8")
    task = get_task_dict(["mmlu_pro_kollm_parity"], TaskManager(include_path=str(inc)))["mmlu_pro_kollm_parity"]
    task.set_config(key="num_fewshot", value=2)
    task.build_all_requests(rank=0, world_size=1)
    theirs = [inst.args[0] for inst in sorted(task.instances, key=lambda i: i.doc_id)]
    t = get_task("mmlu_pro")
    items = [it for it in t.load(tmp_path) if it["category"] == "math"]
    pool = t.few_shot_items(tmp_path)
    ours = [t.requests(it, t.select_fewshot(it, pool, 2, None))[0].args[0] for it in items]
    assert ours == theirs
    assert task.instances[0].args[1]["until"] == ["Question:"]
