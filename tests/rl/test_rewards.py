"""Rewards: every gold answer of GSM8K train and of kor-math scores 1 written as a model writes it
(a worked solution ending in the number, English or Korean, or `\\boxed{}`) and a wrong number 0;
the number normalisation, math-verify's symbolic path, IFEval rewards, format and user rewards."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from kollm.answers import as_number, extract_answer, last_boxed
from kollm.rl.rewards import Rewards, RewardSpec, format_reward, ifeval_reward, math_reward, resolve

ROOT = Path(__file__).resolve().parents[2]
# ../shared/data beside the repository (a worktree one level deeper finds it one level up)
DATA = next((p for p in (ROOT.parent / "shared" / "data", ROOT.parents[1] / "shared" / "data") if p.is_dir()),
            ROOT.parent / "shared" / "data")
GSM8K = DATA / "eval-dev" / "gsm8k" / "train.jsonl"
KOR_MATH = DATA / "post-train" / "kor-math"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _wrong(gold: str) -> str:
    value = Fraction(gold.replace(",", "")) + 1
    return str(value.numerator) if value.denominator == 1 else str(float(value))


def _thousands(gold: str) -> str:
    """1234 -> 1,234 (how a model writes a large amount); anything else unchanged."""
    return f"{int(gold):,}" if gold.lstrip("-").isdigit() else gold


def _writings(question: str, gold: str, korean: bool) -> list[str]:
    # The question's own numbers come first, so the extractor must take the final one.
    if korean:
        return [f"{question}\n풀이: 문제의 수를 차례로 계산합니다.\n따라서 정답은 {_thousands(gold)}개입니다.",
                f"{question} 계산하면 {gold}원입니다.",
                f"{question}\n풀이를 정리하면 답은 \\boxed{{{gold}}}입니다."]
    return [f"{question}\nLet's think step by step. Working through the numbers above,\nThe answer is {_thousands(gold)}.",
            f"{question}\nSo the final answer is $\\boxed{{{gold}}}$."]


@pytest.mark.skipif(not GSM8K.is_file(), reason="shared dev data absent")
def test_every_gsm8k_gold_scores_one_and_a_wrong_number_zero():
    rows = _rows(GSM8K)
    assert len(rows) == 7473
    for r in rows:
        gold = r["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        # the reference solution itself (calculator annotations, "#### N") is how a GSM8K-tuned model writes
        assert math_reward(r["answer"], r) == 1.0, r["answer"]
        assert math_reward(r["answer"].rsplit("####", 1)[0] + "#### " + _wrong(gold), r) == 0.0
        for right, wrong in zip(_writings(r["question"], gold, False), _writings(r["question"], _wrong(gold), False)):
            assert math_reward(right, r) == 1.0, right
            assert math_reward(wrong, r) == 0.0, wrong


@pytest.mark.skipif(not KOR_MATH.is_dir(), reason="shared dev data absent")
def test_every_kor_math_gold_scores_one_and_a_wrong_number_zero():
    files = sorted(KOR_MATH.glob("*.jsonl"))
    assert len(files) == 4
    n = 0
    for f in files:
        for r in _rows(f):
            gold = str(r["answer"]).strip()
            for question, korean in ((r.get("kor_question") or r["question"], True), (r["question"], False)):
                for right, wrong in zip(_writings(question, gold, korean), _writings(question, _wrong(gold), korean)):
                    assert math_reward(right, r) == 1.0, (f.name, right)
                    assert math_reward(wrong, r) == 0.0, (f.name, wrong)
            n += 1
    assert n == 4202


@pytest.mark.parametrize("text,value", [
    ("정답은 42개입니다", 42), ("42원", 42), ("The answer is $1,234.50.", Fraction(2469, 2)), ("10-3 = 7", 7),
    ("x = -3", -3), ("답은 3만 원입니다.", 30000), ("1.5억", 150_000_000), ("5만큼 더 많다: 5", 5),
    ("so 3/4 of it", Fraction(3, 4)), ("온도는 −5도", -5), ("1,000,000달러", 1_000_000), ("25%", 25),
])
def test_last_number_normalises_commas_units_currency_and_korean(text, value):
    assert as_number(extract_answer(text)) == value


def test_boxed_takes_the_last_with_nested_braces():
    assert last_boxed(r"first \boxed{1}, then \boxed{\frac{3}{4}} done") == r"\frac{3}{4}"
    assert extract_answer(r"\boxed{\frac{1}{2}} but 7") == r"\frac{1}{2}"  # boxed wins over a later number
    assert last_boxed("no box 5") is None


@pytest.mark.parametrize("completion,gold,score", [
    (r"\boxed{\frac{3}{4}}", "0.75", 1.0),
    (r"\boxed{\frac{6}{8}}", r"\frac{3}{4}", 1.0),
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", 1.0),        # symbolic: math-verify/sympy
    (r"\boxed{\sqrt{2}}", r"\sqrt{8}", 0.0),
    (r"\boxed{x^2 + 2x + 1}", "(x+1)^2", 1.0),
    (r"\boxed{42개}", "42", 1.0),
    (r"\boxed{3만}", "30000", 1.0),
    ("0.6666666666666666", "2/3", 1.0),               # kor-math writes some golds as long floats
    ("The answer is 2/3.", "0.6666666666666666", 1.0),
    ("The answer is 0.67.", "0.6666666666666666", 0.0),
    ("no number here", "3", 0.0),
])
def test_math_reward_symbolic_and_numeric(completion, gold, score):
    assert math_reward(completion, {"answer": gold}) == score


def test_ifeval_reward_is_the_fraction_of_instructions_followed_in_both_languages():
    row = {"prompt": "Answer in lowercase without commas.",
           "instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma"], "kwargs": [{}, {}]}
    assert ifeval_reward("all lowercase here", row) == 1.0
    assert ifeval_reward("all lowercase, here", row) == 0.5
    assert ifeval_reward("Not Lowercase, here", row) == 0.0
    ko = {"prompt": "쉼표 없이 답하세요.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    assert ifeval_reward("쉼표 없는 답입니다", ko) == 1.0
    assert ifeval_reward("쉼표，있는 답입니다", ko) == 0.0  # the Korean checker also forbids the full-width comma
    assert ifeval_reward("x", {"prompt": "p"}) is None  # not an instruction row: the reward does not apply
    assert math_reward("42", {"prompt": "p"}) is None


def test_format_reward_named_and_regex():
    assert format_reward(r"so \boxed{4}.", {}) == 1.0
    assert format_reward("so 4.", {}) == 0.0
    assert format_reward("<think>2+2</think> <answer>4</answer>", {}, pattern="think_answer") == 1.0
    assert format_reward("따라서 정답은 4입니다.", {}, pattern="answer_phrase") == 1.0
    assert format_reward("abc", {}, pattern=r"^a.c$") == 1.0


def user_length_reward(completion: str, row: dict, target: int = 3) -> float:
    return -abs(len(completion) - target)


def test_rewards_weighted_sum_with_a_user_function_by_dotted_path():
    assert resolve(f"{__name__}.user_length_reward") is user_length_reward
    assert resolve(f"{__name__}:user_length_reward") is user_length_reward
    rewards = Rewards([RewardSpec("math", 1.0), {"name": f"{__name__}.user_length_reward", "weight": 0.5,
                                                  "kwargs": {"target": 1}}])
    totals, parts = rewards(["4", "5 5", "4"], [{"answer": "4"}, {"answer": "4"}, {"prompt": "no answer"}])
    assert totals == [1.0, -1.0, 0.0]  # 1 + 0.5·0 ; 0 + 0.5·(−2) ; (math does not apply) + 0.5·0
    assert parts == {"math": [1.0, 0.0, None], "user_length_reward": [-0.0, -2.0, -0.0]}
    with pytest.raises(ValueError, match="cannot import"):
        resolve("no_such_module_xyz.fn")
    with pytest.raises(ValueError, match="not a built-in"):
        resolve("nodots")
