"""FLOPs, MFU and the dry run: the plan of recipes/trillion-7b.yaml against the report's
59.4K H100-hours at 42.5 % MFU (Trillion Table 1, §3.6)."""

from pathlib import Path

import pytest

from kollm.model.config import get_preset
from kollm.train.config import load_config
from kollm.train.flops import H100_BF16_DENSE, make_plan, mfu
from kollm.train.model_setup import model_config
from kollm.train.pretrain import main

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_flops_per_token_formula():
    cfg = get_preset("trillion-7b")
    n = cfg.num_params() - cfg.vocab_size * cfg.dim  # input embedding is a lookup
    assert cfg.flops_per_token(4096) == 6 * n + 12 * 33 * 4096 * 4096  # 32 layers + the MTP block
    assert mfu(1000.0, 1e9, 1e13, world=2) == pytest.approx(0.05)


def test_trillion_dry_run_lands_on_the_report():
    cfg = load_config(RECIPES / "trillion-7b.yaml")
    plan = make_plan(cfg, model_config(cfg), world=256)
    assert plan.params == get_preset("trillion-7b").num_params()
    stable, anneal, long = plan.phases
    assert stable.tokens + anneal.tokens == pytest.approx(2e12, rel=1e-5)
    assert long.tokens == pytest.approx(60e9, rel=1e-3) and long.seq_len == 32768
    assert stable.first_batch_tokens == 2**20 and stable.last_batch_tokens == anneal.first_batch_tokens == 2**21
    # the report's count: 6·N·D over its 2T pretraining tokens, N = 7.53B (no MTP) → 59.7K vs 59.4K
    d = stable.tokens + anneal.tokens
    hours_6nd = plan.gpu_hours(6 * plan.params_without_mtp * d, 0.425, H100_BF16_DENSE)
    assert hours_6nd == pytest.approx(59_400, rel=0.02)
    # kollm's fuller count (attention + MTP block) is higher by the attention and MTP share
    hours = plan.gpu_hours(sum(plan.phase_flops[:2]), 0.425, H100_BF16_DENSE)
    assert 1.05 < hours / hours_6nd < 1.15


def test_dry_run_cli(capsys):
    assert main([str(RECIPES / "tiny-pretrain.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "216,960" in out and "long_context" in out and "256→512" in out
    assert main([str(RECIPES / "dna-8b-cpt.yaml"), "--dry-run", "--world-size", "8"]) == 0
    assert "8,030,261,248" in capsys.readouterr().out  # llama3.1-8b shapes without the checkpoint


@pytest.mark.parametrize("world", [1, 8, 256])
def test_trillion_dry_run_at_world_sizes(world, capsys):
    assert main([str(RECIPES / "trillion-7b.yaml"), "--dry-run", "--world-size", str(world), "--mfu", "0.425"]) == 0
    out = capsys.readouterr().out
    rows: dict[str, str] = {}
    for line in out.splitlines():  # the phase table's rows (the memory plan below repeats the names)
        if line.split()[:1] in (["stable"], ["long_context"]):
            rows.setdefault(line.split()[0], line)
    assert "1.05M→2.1M" in rows["stable"] and "1,042,508" in rows["stable"]  # the same steps at every world size
    assert rows["long_context"].split()[4] == "2.1M" and "28,611" in rows["long_context"]  # not 8.39M
    assert "stable: the batch ramps 1.05M→2.1M tokens in 257 sizes, 1 sequence(s) of 4096 at a time" in out
    # the report-comparable figure beside kollm's own, and which one the report matches
    assert "6·N·D (report-comparable)                59,694" in out
    assert "6N + 12·L·d·T (kollm's MFU count)        65,914" in out
    assert "59K pre-training H100-hours (Table 1, 2T tokens, 42.5 % MFU) match 6·N·D" in out
    assert ("192 ranks run a padding micro-batch" in out) == (world == 256)
