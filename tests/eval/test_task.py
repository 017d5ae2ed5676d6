"""Task interface: aggregation equals the statistics definitions lm-eval uses, the multiple-choice
metrics normalise by characters and by UTF-8 bytes (they disagree on Hangul), and the registry
and request checks fail loudly."""

import math
import random
import statistics

import pytest

from kollm.eval.task import (
    Request,
    Task,
    argmax,
    bootstrap_stderr,
    get_task,
    mc_metrics,
    mean_stderr,
    register_task,
)


def test_mean_stderr_is_sample_sd_over_sqrt_n():
    xs = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    assert mean_stderr(xs) == pytest.approx(statistics.stdev(xs) / math.sqrt(len(xs)))
    assert math.isnan(mean_stderr([1.0]))


def test_bootstrap_stderr_of_mean_close_to_analytic():
    rng = random.Random(0)
    xs = [float(rng.random() < 0.3) for _ in range(400)]
    analytic = mean_stderr(xs)
    boot = bootstrap_stderr(lambda v: sum(v) / len(v), xs, iters=500)
    assert abs(boot - analytic) < 0.2 * analytic


def test_acc_norm_by_chars_and_by_bytes_differ_on_hangul():
    # choice 0: 2 Hangul chars (6 bytes), ll -3 → per char -1.5, per byte -0.5
    # choice 1: 4 ASCII chars (4 bytes), ll -4 → per char -1.0, per byte -1.0
    m = mc_metrics([(-3.0, False), (-4.0, False)], ["예스", "nope"], gold=0)
    assert m == {"acc": 1.0, "acc_norm": 0.0, "acc_bytes": 1.0}


def test_argmax_takes_first_of_ties():
    assert argmax([1.0, 3.0, 3.0]) == 1


def test_request_validation():
    with pytest.raises(ValueError, match="takes 2 args"):
        Request("loglikelihood", ("only context",))
    with pytest.raises(ValueError, match="unknown request kind"):
        Request("rank", ("a",))


def test_registry_errors():
    with pytest.raises(KeyError, match="unknown task 'no_such_task'"):
        get_task("no_such_task")
    with pytest.raises(ValueError, match="registered twice"):
        register_task("kobest_boolq")(Task)
    # the task is named (it used to read "task : unknown option(s)"), with what it does take
    with pytest.raises(ValueError, match=r"^task kobest_boolq: unknown option\(s\) \['shots'\]; it takes none$"):
        get_task("kobest_boolq", shots=3)
    with pytest.raises(ValueError, match=r"^task humaneval: unknown option\(s\) \['foo'\]; it takes allow_unsafe_code$"):
        get_task("humaneval", foo=1)
    with pytest.raises(ValueError, match=r"^task ko_mt_bench: unknown option\(s\) \['foo'\]; it takes .*judge_model"):
        get_task("ko_mt_bench", foo=1)  # was a bare TypeError


def test_fewshot_sampler_never_returns_the_item():
    t = get_task("kobest_boolq")
    pool = [{"q": i} for i in range(6)]
    for seed in range(20):
        shots = t.select_fewshot(pool[2], pool, 5, random.Random(seed))
        assert len(shots) == 5 and pool[2] not in shots
