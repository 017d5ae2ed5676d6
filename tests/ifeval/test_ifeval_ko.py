"""Korean IFEval (KoIFEval) checkers: the 22 types of the Trillion report's Table 15, each on a
passing and a failing Korean response, and Korean-correct counting of words (어절), sentences,
letters (jamo inside syllables), particles after keywords."""

import json

import pytest

from kollm.eval.task import get_task
from kollm.ifeval import REGISTRY, check, score_row, validate_row
from kollm.ifeval.instructions_ko import count_letter, count_sentences, count_words, jamo

CASES = [
    ("keywords:existence", {"keywords": ["인공지능"]}, "인공지능은 빠르게 발전한다.", "기계 학습은 빠르게 발전한다."),
    ("keywords:frequency", {"keyword": "서울", "frequency": 2, "relation": "at least"},
     "서울은 크다. 서울에서 살았다.", "서울은 크다. 부산에서 살았다."),
    ("keywords:frequency", {"keyword": "서울", "frequency": 2, "relation": "미만"}, "서울은 크다.", "서울은 서울이다."),
    # particles: "사과를" contains the forbidden "사과"; "과일" does not start an eojeol with it
    ("keywords:forbidden_words", {"forbidden_words": ["사과"]}, "나는 과일을 먹었다. 배사과즙", "나는 사과를 먹었다."),
    ("keywords:letter_frequency", {"letter": "ㄱ", "let_frequency": 3, "let_relation": "at least"},
     "강가에 갔다", "바다에 갔다"),
    ("keywords:letter_frequency", {"letter": "다", "let_frequency": 2, "let_relation": "less than"},
     "바다에 가요", "바다에 갔다"),
    ("language:response_language", {"language": "ko"}, "오늘은 날씨가 정말 좋아서 공원에 산책을 갔습니다.",
     "The weather was lovely today."),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "at least"},
     "첫 문장입니다. 둘째 문장이에요!\n셋째 줄은 마침표가 없다", "첫 문장입니다. 원주율은 3.14입니다."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "첫 단락.\n***\n둘째 단락.",
     "첫 단락만 있다."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "하나.\n* * *\n둘.\n* * *\n셋.",
     "하나.\n* * *\n\n* * *\n셋."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "less than"}, "사과를 먹었다. AI-기반 서비스",
     "나는 오늘 아침에 사과를 먹었다."),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "서울"}, "소개.\n\n서울은 수도이다.", "소개.\n\n부산은 항구다."),
    ("detectable_content:postscript", {"postscript_marker": "추신:"}, "본문.\n\n추신: 또 봐요", "본문. 또 봐요"),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[이름]님, [주소]로 보냅니다.", "[이름]님께."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "* 하나\n* 둘\n- 셋", "* 하나\n* 둘"),
    ("detectable_format:title", {}, "«기쁨의 시»\n본문", "기쁨의 시\n본문"),
    ("detectable_format:title", {}, "《기쁨의 시》\n본문", "< 기쁨의 시 >"),
    ("detectable_format:constrained_response", {}, "제 대답은 아니요입니다.", "아니요."),
    ("detectable_format:constrained_response", {"options": ["좋아요", "싫어요"]}, "음... 좋아요", "글쎄요"),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*강조된부분* 그리고 *둘째*", "*하나*만"),
    ("detectable_format:multiple_sections", {"section_spliter": "섹션", "num_sections": 2},
     "섹션 1. 소개\n섹션 2. 본론", "섹션 1. 소개"),
    ("detectable_format:json_format", {}, '{"답": "서울"}', "답: 서울"),
    ("combination:repeat_prompt", {"prompt_to_repeat": "한국의 수도는?"}, "한국의 수도는? 서울입니다.", "서울입니다."),
    ("combination:two_responses", {}, "첫째 답.\n******\n둘째 답.", "첫째 답.\n*****\n둘째 답."),
    ("startend:end_checker", {"end_phrase": "감사합니다."}, "도움이 되었길 바랍니다. 감사합니다.", "감사합니다. 안녕히."),
    ("startend:quotation", {}, "“전체를 감쌌습니다.”", "“앞만 감쌌습니다."),
    ("punctuation:no_comma", {}, "쉼표 없이 씁니다.", "사과，배"),
]


def test_22_types_of_table_15():
    assert len(REGISTRY["ko"]) == 22 and {c[0] for c in CASES} == set(REGISTRY["ko"])
    assert not any(i.startswith("change_case:") for i in REGISTRY["ko"])


@pytest.mark.parametrize("iid,kw,good,bad", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_checker_positive_and_negative(iid, kw, good, bad):
    assert check("ko", iid, good, kw) is True
    assert check("ko", iid, bad, kw) is False


def test_korean_counting():
    assert count_words("나는 사과를 먹었다.") == 3
    assert count_words("AI-기반 서비스가 3.5% 성장했다 !") == 4  # a lone "!" is not a word
    assert count_sentences("안녕하세요. 반갑습니다!\n목록은 다음과 같다\n- 첫째 항목이다") == 4
    assert count_sentences("원주율은 3.14이다. 정말요?! “그렇다.” 끝") == 4
    assert count_sentences("Dr. Kim은 왔다.") == 1
    assert count_sentences("***\n\n") == 0
    assert jamo("강") == ["ㄱ", "ㅏ", "ㅇ"] and jamo("닭") == ["ㄷ", "ㅏ", "ㄺ"]
    assert count_letter("까치가 갔다", "ㄱ") == 2 and count_letter("까치가 갔다", "ㄲ") == 1
    assert count_letter("Banana", "a") == 3


def test_english_checker_would_get_korean_wrong():
    # the reason for the Korean variants: IFEval's \b-bounded forbidden word misses particles
    assert check("en", "keywords:forbidden_words", "나는 사과를 먹었다.", {"forbidden_words": ["사과"]})
    assert not check("ko", "keywords:forbidden_words", "나는 사과를 먹었다.", {"forbidden_words": ["사과"]})


def test_loose_korean_row_and_task(tmp_path):
    row = validate_row({"key": 7, "prompt": "제목을 달고 쉼표 없이 쓰세요.",
                        "instruction_id_list": ["detectable_format:title", "punctuation:no_comma"],
                        "kwargs": [{}, {}]}, "ko")
    s = score_row(row, "네, 알겠습니다.\n《봄》\n봄이 왔다", "ko")
    assert s["inst_level_strict_acc"] == [True, False] and s["inst_level_loose_acc"] == [True, True]
    d = tmp_path / "ko_ifeval"
    d.mkdir()
    bad = {"key": 8, "prompt": "x", "instruction_id_list": ["change_case:english_capital"], "kwargs": [{}]}
    (d / "test.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\n" + json.dumps(bad) + "\n")
    task = get_task("ko_ifeval")
    items = task.load(tmp_path)
    assert len(items) == 1 and len(task.bad_rows) == 1 and "test.jsonl:2" in task.bad_rows[0]
    m = task.process(items[0], ["《봄》\n봄이 왔다"])
    assert m["prompt_level_strict_acc"] == 1.0
    agg = task.aggregate([m, task.process(items[0], ["봄, 여름"])], bootstrap_iters=10)
    assert agg["prompt_level_strict_acc"]["value"] == 0.5 and agg["inst_level_strict_acc"]["value"] == 0.5
    assert agg["strict_average"]["value"] == 0.5


# --- the public Korean IFEval layout {id, input, ifeval: [{id, kwargs}]} ---------------------------

PHRASINGS = [  # (prompt as released, the answer it allows, a near-miss it does not)
    ("다음 질문에 답하세요: 서울은 한국의 수도인가요? ('제 답변은 예입니다.', '제 답변은 아니요입니다.', "
     "'제 답변은 잘 모르겠습니다.' 중 하나로 답하세요)", "제 답변은 잘 모르겠습니다.", "제 대답은 예입니다."),
    ("김치는 발효 식품인가요? “내 대답은 예.”, “내 대답은 아니요.”, “내 대답은 아마도.” 중 하나로만 답하세요.",
     "음, 내 대답은 예.", "제 답변은 예입니다."),
    ("고양이는 포유류인가요? 다음 중 하나로 답하세요: \"제 대답은 예입니다.\", \"제 대답은 아니요입니다.\", "
     "\"제 대답은 아마도입니다.\"", "제 대답은 아니요입니다.", "내 대답은 아니요."),
]


@pytest.mark.parametrize("prompt,good,bad", PHRASINGS, ids=["제 답변은", "내 대답은", "제 대답은"])
def test_constrained_response_options_from_the_prompt(prompt, good, bad):
    row = validate_row({"id": 1, "input": prompt,
                        "ifeval": [{"id": "detectable_format:constrained_response", "kwargs": {}}]}, "ko")
    assert row["prompt"] == prompt and row["instruction_id_list"] == ["detectable_format:constrained_response"]
    assert len(row["kwargs"][0]["options"]) == 3 and good.removeprefix("음, ") in row["kwargs"][0]["options"]
    assert score_row(row, good, "ko")["prompt_level_strict_acc"] is True
    assert score_row(row, bad, "ko")["prompt_level_strict_acc"] is False


def test_constrained_response_without_options_in_prompt_accepts_every_phrasing():
    row = validate_row({"id": 2, "input": "예 또는 아니요로 답하세요.",
                        "ifeval": [{"id": "detectable_format:constrained_response", "kwargs": None}]}, "ko")
    assert row["kwargs"] == [{}]
    for ans in ("제 답변은 예입니다.", "내 대답은 아니요입니다.", "제 대답은 아마도입니다.", "My answer is yes."):
        assert score_row(row, ans, "ko")["prompt_level_strict_acc"] is True
    assert score_row(row, "예.", "ko")["prompt_level_strict_acc"] is False


def test_public_layout_task_and_english_keyword_warnings(tmp_path):
    d = tmp_path / "ko_ifeval"
    d.mkdir()
    rows = [
        {"id": 10, "input": "제목을 달고 쉼표 없이 쓰세요.",
         "ifeval": [{"id": "detectable_format:title", "kwargs": {}}, {"id": "punctuation:no_comma", "kwargs": {}}]},
        # the translation left the keyword in English: loads, warned, checked as given
        {"id": 11, "input": "사과에 대한 글을 쓰고 '사과'라는 단어를 포함하세요.",
         "ifeval": [{"id": "keywords:existence", "kwargs": {"keywords": ["apple"]}}]},
        # an English word the prompt itself asks for is not a warning
        {"id": 12, "input": "'AI'라는 단어를 두 번 이상 쓰세요.",
         "ifeval": [{"id": "keywords:frequency", "kwargs": {"keyword": "AI", "frequency": 2, "relation": "at least"}}]},
        {"id": 13, "input": "잘못된 행", "ifeval": "detectable_format:title"},
    ]
    (d / "test.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    task = get_task("ko_ifeval")
    items = task.load(tmp_path)
    assert [it["key"] for it in items] == [10, 11, 12]
    assert len(task.bad_rows) == 1 and "test.jsonl:4" in task.bad_rows[0] and "'ifeval' must be" in task.bad_rows[0]
    assert len(task.data_warnings) == 1 and "test.jsonl:2" in task.data_warnings[0] and "'apple'" in task.data_warnings[0]
    assert task.process(items[1], ["사과는 맛있다."])["prompt_level_strict_acc"] == 0.0  # no crash, just fails

    from kollm.eval.harness import EvalConfig, evaluate

    class Echo:
        name = "echo"

        def generate(self, reqs):
            return ["《봄》\n봄이 왔다", "사과는 맛있다", "AI는 AI다"]

        def loglikelihood(self, pairs):
            return []

    res = evaluate(Echo(), [get_task("ko_ifeval")], EvalConfig(data_dir=str(tmp_path)), log=lambda m: None)
    r = res["results"]["ko_ifeval"]
    assert r["data_warnings"]["count"] == 1 and r["bad_rows"] == 1
    assert r["metrics"]["prompt_level_strict_acc"]["value"] == pytest.approx(2 / 3)
