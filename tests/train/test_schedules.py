"""Schedules: WSD with the inverse-proportional decay (Trillion §3.4), cosine and linear; the
batch-size ramp; and the step plan of a phased run against a brute-force simulation."""

import math

import pytest

from kollm.train.config import BatchSection, ScheduleSection, config_from_dict
from kollm.train.schedules import global_batch_tokens, lr_at, micro_batches, phase_at, plan_phases


def test_wsd_is_the_reports_curve():
    cfg = ScheduleSection(kind="wsd", warmup_steps=100, decay_fraction=0.1, final_lr_ratio=0.1)
    peak, total = 2e-4, 10_000
    lrs = [lr_at(s, total, peak, cfg) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / 100) and lrs[99] == pytest.approx(peak)
    assert all(lr == peak for lr in lrs[100:9000])  # stable
    assert lrs[-1] == pytest.approx(2e-5)  # 10 % of peak at the end: k = 9
    for step in (9000, 9249, 9499, 9999):
        s = (step + 1 - 9000) / 1000
        assert lrs[step] == pytest.approx(peak / (1 + 9 * s))
    assert lrs[9499] == pytest.approx(peak / 5.5)  # halfway: 1 + 9/2
    assert all(a >= b for a, b in zip(lrs[9000:], lrs[9001:]))
    assert lr_at(total + 5, total, peak, cfg) == pytest.approx(2e-5)


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_cosine_and_linear_end_at_the_floor(kind):
    cfg = ScheduleSection(kind=kind, warmup_steps=10, final_lr_ratio=0.1)
    lrs = [lr_at(s, 110, 1.0, cfg) for s in range(110)]
    assert lrs[9] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    mid = lrs[59]  # progress 0.5
    assert mid == pytest.approx(0.55)  # cosine and linear agree at the midpoint
    quarter = lrs[34]  # progress 0.25
    expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)) if kind == "cosine" else 1 - 0.9 * 0.25
    assert quarter == pytest.approx(expected)


def test_batch_ramp():
    b = BatchSection(tokens=2_000_000, ramp_from=1_000_000, ramp_tokens=10**12)
    assert global_batch_tokens(b, 0) == 1_000_000
    assert global_batch_tokens(b, 5 * 10**11) == 1_500_000
    assert global_batch_tokens(b, 10**12) == global_batch_tokens(b, 10**13) == 2_000_000
    # 2M tokens at 4096 on 4 ranks = 122 sequences per rank, in micro-batches of at most 8
    sizes = micro_batches(b, 10**12, 4096, 8, 4)
    assert sum(sizes) == round(2_000_000 / 4096 / 4) and max(sizes) <= 8 and max(sizes) - min(sizes) <= 1
    assert micro_batches(BatchSection(tokens=10), 0, 4096, 8, 4) == [1]  # never zero sequences


def brute_force(cfg, world):
    """Step by step, no closed-form jump."""
    out, seen = [], 0
    for ph in cfg.phases:
        seq, mb = ph.data["seq_len"], ph.data["batch_size"]
        steps, tokens = 0, 0
        while (steps < ph.steps) if ph.steps is not None else (tokens < ph.tokens):
            t = sum(micro_batches(cfg.batch, seen, seq, mb, world)) * seq * world
            steps, tokens, seen = steps + 1, tokens + t, seen + t
        out.append((steps, tokens))
    return out


@pytest.mark.parametrize("world", [1, 3])
def test_plan_matches_brute_force(world):
    cfg = config_from_dict({
        "batch": {"tokens": 4096, "ramp_from": 1024, "ramp_tokens": 50_000},
        "phases": [{"name": "a", "tokens": 30_000, "data": {"seq_len": 64, "batch_size": 4}},
                   {"name": "b", "tokens": "100K", "data": {"seq_len": 64, "batch_size": 4}},
                   {"name": "c", "steps": 7, "data": {"seq_len": 256, "batch_size": 1}}]})
    plans = plan_phases(cfg, world)
    assert [(p.steps, p.tokens) for p in plans] == brute_force(cfg, world)
    assert plans[1].start_step == plans[0].steps and plans[2].steps == 7
    assert plans[0].first_batch_tokens < plans[1].last_batch_tokens
    assert phase_at(plans, 0) == 0 and phase_at(plans, plans[1].start_step) == 1
    assert phase_at(plans, 10**9) == 2


def test_decay_starts_at_the_named_phase_with_a_batch_ramp():
    """Trillion §3.2: the anneal phase begins where the LR starts to fall. With a ramp, early steps
    are small, so 10 % of steps would start the decay before the anneal phase's data."""
    raw = {"batch": {"tokens": 512, "ramp_from": 128, "ramp_tokens": 9216},
           "schedule": {"warmup_steps": 2, "decay_start": "anneal"},
           "phases": [{"name": "stable", "tokens": 9216, "data": {"seq_len": 64, "batch_size": 8}},
                      {"name": "anneal", "tokens": 1024, "data": {"seq_len": 64, "batch_size": 8}}]}
    cfg = config_from_dict(raw)
    plans = plan_phases(cfg, 1)
    total = sum(p.steps for p in plans)
    from kollm.train.schedules import decay_start_step

    start = decay_start_step(cfg, plans)
    assert (start, total) == (35, 37) and total - round(0.1 * total) == 33  # steps-based: 2 steps early
    lrs = [lr_at(s, total, 1.0, cfg.schedule, start) for s in range(total)]
    assert all(lr == 1.0 for lr in lrs[2:start]) and lrs[start] < 1.0 and lrs[-1] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="decay_start: 'nope' must name a scheduled phase"):
        config_from_dict({**raw, "schedule": {"decay_start": "nope"}})
