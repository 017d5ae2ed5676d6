"""KoBEST loaders on real rows: the original TSVs (shared dev data) and the Hugging Face layout
(fixtures built from the same rows) give the same items; prompts are lm-eval's strings; bad rows
are counted with file and line, not fatal."""

import shutil

import pytest

from kollm.eval.task import get_task

TASKS = ["kobest_boolq", "kobest_copa", "kobest_hellaswag", "kobest_sentineg", "kobest_wic"]
DEV_SIZES = {"kobest_boolq": 700, "kobest_copa": 500, "kobest_hellaswag": 500, "kobest_sentineg": 400,
             "kobest_wic": 610}


def strip(items):
    return [{k: v for k, v in it.items() if k != "_where"} for it in items]


@pytest.mark.parametrize("name", TASKS)
def test_original_tsv_and_hf_layout_agree(name, shared, fixtures):
    t = get_task(name)
    orig = t.load(shared)  # no test.tsv in the dev data: the dev split is scored
    assert len(orig) == DEV_SIZES[name] and not t.bad_rows
    train = t.few_shot_items(shared)
    assert len(train) > 1000 and not t.bad_rows  # train mixes True/TRUE: all read
    hf = get_task(name).load(fixtures)
    assert strip(hf) == strip(orig[: len(hf)])
    assert {it["gold"] for it in orig} == {0, 1} | ({2, 3} if name == "kobest_hellaswag" else set())


def test_prompts_are_lm_evals(shared):
    copa = get_task("kobest_copa")
    item = copa.load(shared)[0]
    assert item["gold"] == 1  # original Answer 2 (1-based)
    reqs = copa.requests(item)
    assert [r.args for r in reqs] == [("전쟁이 시작되었다.  그래서", " 병사들이 집으로 돌아왔다."),
                                      ("전쟁이 시작되었다.  그래서", " 병사들이 전투에 파견되었다.")]
    boolq = get_task("kobest_boolq")
    b = boolq.load(shared)[0]
    assert boolq.requests(b)[1].args == (f"{b['paragraph']} 질문: 봉룡은 숙정을 죽였는가? 답변: ", " 예")
    senti = get_task("kobest_sentineg")
    s = senti.load(shared)[0]
    assert [r.args for r in senti.requests(s)] == [("문장: 만족입니다 긍부정:", " 부정"), ("문장: 만족입니다 긍부정:", " 긍정")]
    wic = get_task("kobest_wic")
    w = wic.load(shared)[0]
    assert wic.requests(w)[0].args[0].endswith("두 문장에서 실정가 같은 뜻으로 쓰였나?")
    hs = get_task("kobest_hellaswag")
    h = hs.load(shared)[0]
    assert hs.requests(h)[0].args[0].startswith("문장: 모자를 쓴 투수가") and h["gold"] == 3
    # few-shot: shots joined by a blank line, each "text target"
    shot = copa.load(shared)[1]
    ctx = copa.requests(item, [shot])[0].args[0]
    assert ctx == f"{shot['premise']}  그래서 {shot['choices'][shot['gold']]}\n\n전쟁이 시작되었다.  그래서"


def test_malformed_rows_are_counted_not_fatal(tmp_path, shared):
    d = tmp_path / "kobest" / "COPA"
    d.mkdir(parents=True)
    lines = (shared / "kobest/COPA/dev.tsv").read_text(encoding="utf-8").splitlines()[:6]
    lines[2] = lines[2] + "\textra"  # 7 fields
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\t3"  # Answer 3 of 2
    (d / "dev.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    t = get_task("kobest_copa")
    items = t.load(tmp_path)
    assert len(items) == 3 and len(t.bad_rows) == 2
    assert t.bad_rows[0].startswith(f"{d / 'dev.tsv'}:3: 7 fields")
    assert f"{d / 'dev.tsv'}:4:" in t.bad_rows[1] and "1 or 2" in t.bad_rows[1]


def test_missing_files_name_the_paths(tmp_path, fixtures):
    with pytest.raises(FileNotFoundError, match="kobest_v1"):
        get_task("kobest_boolq").load(tmp_path)
    shutil.copytree(fixtures / "kobest_v1" / "copa", tmp_path / "kobest_v1" / "copa")
    with pytest.raises(FileNotFoundError, match="boolq/ or BoolQ/"):
        get_task("kobest_boolq").load(tmp_path)


def test_macro_f1_is_sklearns():
    """KoBEST's headline metric (lm-eval: sklearn f1_score average='macro'), including a label that
    is predicted but never gold and one that is gold but never predicted."""
    import random

    from sklearn.metrics import f1_score

    from kollm.eval.tasks.common import macro_f1

    assert macro_f1([(0, 0), (0, 1), (1, 1), (1, 1), (2, 1)]) == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    rng = random.Random(0)
    for _ in range(20):
        pairs = [(rng.randrange(3), rng.randrange(4)) for _ in range(rng.randrange(1, 40))]
        gold, pred = zip(*pairs)
        assert macro_f1(pairs) == pytest.approx(f1_score(gold, pred, average="macro"))
