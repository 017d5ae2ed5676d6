"""Bad rows in a benchmark file are counted with file:line and the rest is scored: a COPA question
that is neither 원인 nor 결과, a non-UTF-8 byte, a label outside the choices, a row nested
100,000 levels deep (a RecursionError before), a broken few-shot row; `--limit` is a count."""

import json

import pytest

from kollm.eval.harness import EvalConfig, evaluate
from kollm.eval.task import get_task

GOOD = [{"premise": "전쟁이 시작되었다.", "question": "결과", "alternative_1": "병사들이 집으로 돌아왔다.",
         "alternative_2": "병사들이 전쟁터로 떠났다.", "label": 1},
        {"premise": "남자는 토스트가 타는 냄새를 맡았다.", "question": "원인", "alternative_1": "토스트기가 고장났다.",
         "alternative_2": "남자는 토스트기를 구입했다.", "label": 0}]


class FirstChoice:
    name = "first"

    def loglikelihood(self, pairs):
        # the same context twice in a row = the two choices of one item: prefer the first
        out, prev = [], None
        for ctx, _ in pairs:
            out.append((-1.0 if ctx != prev else -2.0, False))
            prev = ctx
        return out


def test_copa_bad_rows_are_counted_and_the_rest_scored(tmp_path):
    d = tmp_path / "kobest_v1" / "copa"
    d.mkdir(parents=True)
    lines = [json.dumps(GOOD[0], ensure_ascii=False).encode(),
             json.dumps({**GOOD[0], "question": "이유"}, ensure_ascii=False).encode(),  # neither 원인 nor 결과
             json.dumps(GOOD[1], ensure_ascii=False).encode().replace("토스트".encode(), b"\xff\xfe"),  # not UTF-8
             json.dumps({**GOOD[1], "label": 5}, ensure_ascii=False).encode(),  # 2 choices
             b"[" * 100_000 + b"]" * 100_000,  # nested too deeply for json.loads
             json.dumps(GOOD[1], ensure_ascii=False).encode()]
    (d / "test.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (d / "train.jsonl").write_bytes(json.dumps({**GOOD[0], "question": "?"}, ensure_ascii=False).encode() + b"\n"
                                    + json.dumps(GOOD[1], ensure_ascii=False).encode() + b"\n")
    task = get_task("kobest_copa")
    res = evaluate(FirstChoice(), [(task, 1)], EvalConfig(data_dir=str(tmp_path)), log=lambda m: None)
    r = res["results"]["kobest_copa"]
    assert r["n"] == 2 and r["bad_rows"] == 5 and r["metrics"]["acc"]["value"] == 0.5  # gold 1 and 0, picks 0
    where = [b.split(": ")[0] for b in task.bad_rows]
    f = d / "test.jsonl"
    assert set(where) == {f"{f}:2", f"{f}:3", f"{f}:4", f"{f}:5", f"{d / 'train.jsonl'}:1 (few-shot pool)"}
    text = "\n".join(task.bad_rows)
    # the reasons of kollm.jsonrows, the same as every training stage's
    assert f"{f}:3: invalid_utf8" in text and f"{f}:5: nested_too_deep" in text
    assert "label 5 is not one of the 2 choices" in text
    assert "KeyError: '이유'" in text


def test_limit_is_a_positive_count(tmp_path):
    d = tmp_path / "kobest_v1" / "copa"
    d.mkdir(parents=True)
    (d / "test.jsonl").write_text("".join(json.dumps(g, ensure_ascii=False) + "\n" for g in GOOD * 2))
    res = evaluate(FirstChoice(), [(get_task("kobest_copa"), 0)], EvalConfig(data_dir=str(tmp_path), limit=3),
                   log=lambda m: None)
    assert res["results"]["kobest_copa"]["n"] == 3
    with pytest.raises(ValueError, match="limit must be a positive number"):
        EvalConfig(data_dir=str(tmp_path), limit=-1)


def test_the_scored_split_and_count_are_recorded_and_printed(tmp_path):
    from kollm.eval.harness import summary_table
    from kollm.eval.task import Task

    d = tmp_path / "kobest_v1" / "copa"
    d.mkdir(parents=True)
    (d / "validation.jsonl").write_text("".join(json.dumps(g, ensure_ascii=False) + "\n" for g in GOOD))
    logs = []
    res = evaluate(FirstChoice(), [(get_task("kobest_copa"), 0)], EvalConfig(data_dir=str(tmp_path)), log=logs.append)
    r = res["results"]["kobest_copa"]
    assert r["split"] == "validation" and r["n"] == 2  # no test split: the dev one, and it says so
    assert "kobest_copa: 2 items of the validation split, 0-shot" in logs
    assert summary_table(res).splitlines()[1].split()[:3] == ["kobest_copa", "validation", "acc"]

    class DevOnly(Task):  # MMLU's shape: test, else dev
        eval_splits = ("test", "dev")

        def _load(self, data_dir, split):
            return [{"x": 1}] if split == "dev" else []

    t = DevOnly()
    assert t.load(None) == [{"x": 1}] and t.split == "dev"
