"""kollm.answers, the one answer matcher of evaluation (HRM8K) and GRPO's math reward: it keeps
every match either of the two copies it replaced made, and the cases each one missed."""

import pytest

from kollm.answers import answers_match, last_boxed


def old_eval_match(pred: str, gold: str) -> bool:
    """The evaluation copy as it was (eval/tasks/reasoning.py): floats within 1e-6, else is_equiv."""
    from kollm.answers import is_equiv

    try:
        return abs(float(pred.replace(",", "")) - float(gold.replace(",", ""))) < 1e-6
    except ValueError:
        return is_equiv(pred, gold)


@pytest.mark.parametrize("gold,pred", [
    (r"\frac{1}{2}", "0.5"), ("(1,2)", r"\left( 1, 2 \right)"), ("90", r"90^\circ"), ("5", "x = 5"),
    ("0.333333", "0.3333333"), ("1,024", "1024"),
])
def test_keeps_the_evaluation_copys_matches(gold, pred):
    assert old_eval_match(pred, gold)
    assert answers_match(gold, pred)


@pytest.mark.parametrize("gold,pred", [
    (r"\frac{3}{4}", r"\frac{6}{8}"), (r"\sqrt{8}", r"2\sqrt{2}"), ("42", "42개"), ("30000", "3만"),
    ("2/3", "0.6666666666666666"),
])
def test_matches_what_the_evaluation_copy_missed(gold, pred):
    assert not old_eval_match(pred, gold)
    assert answers_match(gold, pred)


@pytest.mark.parametrize("gold,pred", [("3", "4"), ("0.6666666666666666", "0.67"), (r"\sqrt{8}", r"\sqrt{2}")])
def test_wrong_answers_stay_wrong(gold, pred):
    assert not answers_match(gold, pred)


def test_last_boxed_reads_both_of_hendrycks_forms():
    assert last_boxed(r"a \boxed{\frac{1}{2}} b \fbox{x^{2}}") == "x^{2}"
    assert last_boxed(r"so $\boxed 5$ and then {x}") == "5"  # the reward copy read "x" here
    assert last_boxed(r"\boxed{unclosed") is None and last_boxed("no box") is None
