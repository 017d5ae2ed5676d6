"""Schedules: WSD with the inverse-proportional decay (Trillion §3.4), cosine and linear; the
batch-size ramp; and the step plan of a phased run against a brute-force simulation."""

import math
from pathlib import Path

import pytest

from kollm.train.config import BatchSection, ScheduleSection, config_from_dict, load_config
from kollm.train.schedules import (
    global_batch_tokens,
    global_sequences,
    lr_at,
    micro_batches,
    phase_at,
    plan_phases,
)


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
        seq, mb = ph.data.seq_len, ph.data.batch_size
        steps, tokens = 0, 0
        while (steps < ph.steps) if ph.steps is not None else (tokens < ph.tokens):
            t = sum(sum(micro_batches(cfg.batch, seen, seq, mb, world, r)) for r in range(world)) * seq
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


TRILLION = Path(__file__).resolve().parents[2] / "recipes" / "trillion-7b.yaml"


@pytest.mark.parametrize("world", [1, 8, 256])
def test_trillion_ramp_is_gradual_at_any_world_size(world):
    """§3.4: 1M → 2M over the first 1T tokens, one sequence at a time at every world size (it was a
    single jump at 0.5T on 256 ranks: per-rank counts rounded to whole sequences)."""
    cfg = load_config(TRILLION)
    stable = plan_phases(cfg, world)[0]
    gs = [g for _, g in stable.batches]
    assert gs == list(range(256, 513))  # 256 → 512 sequences of 4096, every size in between
    steps = [s for s, _ in stable.batches]
    assert all(b > a for a, b in zip(steps, steps[1:]))
    # at 0.5T tokens the batch is half-way (1.5M), not still 1M or already 2M
    half = next(s for s, g in stable.batches if g == 384)
    seen = sum((b_s - a_s) * g * 4096 for (a_s, g), (b_s, _) in zip(stable.batches, stable.batches[1:]) if b_s <= half)
    # 384 sequences start where round(global / 4096) first reaches 384: global = 383.5 · 4096
    start = (383.5 * 4096 - 2**20) / 2**20 * 1e12
    assert start <= seen < start + 384 * 4096
    # a mid-ramp step: the ranks' sequences add up to the global batch, micro-step counts agree
    for g_tokens in (300 * 4096, 385 * 4096):
        seen = round((g_tokens - cfg.batch.ramp_from) / (cfg.batch.tokens - cfg.batch.ramp_from) * cfg.batch.ramp_tokens)
        g = global_sequences(cfg.batch, seen, 4096)
        per_rank = [micro_batches(cfg.batch, seen, 4096, 2, world, r) for r in range(world)]
        assert sum(map(sum, per_rank)) == g
        assert len({len(m) for m in per_rank}) == 1
        assert max(map(sum, per_rank)) - min(map(sum, per_rank)) <= 1


@pytest.mark.parametrize("world", [1, 8, 64, 256, 512])
def test_long_context_batch_is_the_configured_2M_at_any_world_size(world):
    """At 256 ranks the plan had 8,388,608 tokens per step: max(1, round(2M / (32768 · 256))) = 1
    sequence per rank. Now the 64 sequences are dealt over the ranks and the rest pad."""
    cfg = load_config(TRILLION)
    long = plan_phases(cfg, world)[2]
    assert long.name == "long_context" and long.seq_len == 32768
    assert long.first_batch_tokens == long.last_batch_tokens == 2_097_152
    assert long.steps == math.ceil(60e9 / 2_097_152)
    ranks = [micro_batches(cfg.batch, 2 * 10**12, 32768, 1, world, r) for r in range(world)]
    assert sum(map(sum, ranks)) == 64 and len({len(m) for m in ranks}) == 1
    assert sum(m == [0] for m in ranks) == max(0, world - 64)  # padding micro-batches


def test_trillion_anneal_mixture_follows_section_6_1():
    """§6.1's chosen anneal (Anneal + Quality + Composition) up-samples multilingual, math and code;
    §3.2 triples multilingual; §1/§8 budgets: multilingual < 220B (Korean < 180B), math + code < 2 %."""
    cfg = load_config(TRILLION)
    stable, anneal, long = (p.data.to_dict() for p in cfg.phases)
    tokens = {p.name: p.tokens for p in cfg.phases}
    multi = ("ko", "ja", "zh")
    for lang in (*multi, "code", "math"):
        assert anneal["beta"][lang] == pytest.approx(3 * stable["beta"][lang])  # up-sampled, ×3
    assert anneal["beta"]["en"] < stable["beta"]["en"]
    assert long["beta"] == anneal["beta"]
    for d in (stable, anneal, long):
        assert sum(d["beta"].values()) == pytest.approx(1.0) and d["packing"] == "literal"

    def budget(langs):
        return sum(tokens[n] * d["beta"][lang] for n, d in (("stable", stable), ("anneal", anneal)) for lang in langs)
    assert budget(multi) < 220e9 and budget(["ko"]) < 180e9
    assert budget(["code", "math"]) < 0.02 * 2e12
