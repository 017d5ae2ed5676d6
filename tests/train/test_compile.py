"""`parallel.compile: true`: each block compiled in place (kollm.train.parallel.apply_compile). On a
tiny model the compiled run's losses equal eager's within float tolerance, the checkpoint keys are
unchanged, and the phase change (sequence 32 → 64) compiles nothing new: the log's recompile count
stays at zero and the graphs of the first step serve both phases; a micro-batch of 1 does compile
again (dynamo specialises size 1), and the count shows it. CI compiles with the aot_eager
backend (dynamo's capture, guards and AOT autograd, no inductor code generation: 4.5 min of a loaded
2-core box otherwise); KOLLM_COMPILE_BACKEND=inductor runs the same test with inductor
(bench/gpu_check.sh does, on the GPU)."""

import os

import pytest
import torch
from synthetic import SyntheticLoader

from kollm.model.config import get_preset
from kollm.model.transformer import build_model
from kollm.train.config import config_from_dict
from kollm.train.trainer import LMObjective, Trainer

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def train(tmp_path, compile_: bool):
    cfg = config_from_dict({
        "output_dir": str(tmp_path / str(compile_)), "batch": {"tokens": 4 * 64}, "optimizer": {"lr": 3e-3},
        "schedule": {"warmup_steps": 1}, "logging": {"progress": False},
        "checkpoint": {"every": 0, "export_hf": False}, "parallel": {"compile": compile_},
        "phases": [{"name": "short", "steps": 2, "mtp_alpha": 0.2, "data": {"seq_len": 32, "batch_size": 2}},
                   {"name": "long", "steps": 2, "mtp_alpha": 0.1, "data": {"seq_len": 64, "batch_size": 2}},
                   # micro-batch 1: dynamo specialises size 1, the one recompile the log must show
                   {"name": "single", "steps": 1, "mtp_alpha": 0.1, "data": {"seq_len": 64, "batch_size": 1}}]})
    torch.manual_seed(0)
    t = Trainer(cfg, build_model(get_preset("tiny-sandwich-mtp")), LMObjective("document"), SyntheticLoader())
    return t, t.fit()


def test_compiled_blocks_match_eager_without_recompiling(tmp_path, monkeypatch):
    monkeypatch.setenv("KOLLM_COMPILE_BACKEND", os.environ.get("KOLLM_COMPILE_BACKEND", "aot_eager"))
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    _, eager = train(tmp_path, False)
    t, compiled = train(tmp_path, True)
    assert type(t.model.model.layers[0]).__name__ == "Block"  # compiled in place, not wrapped
    assert [h["phase"] for h in compiled] == ["short", "short", "long", "long", "single"]
    for e, c in zip(eager, compiled):  # fp32: inductor reorders reductions, nothing else
        assert c["loss"] == pytest.approx(e["loss"], rel=1e-4)
        assert c["grad_norm"] == pytest.approx(e["grad_norm"], rel=1e-3)
    recompiles = [h["recompiles"] for h in compiled]
    assert recompiles[:4] == [0, 0, 0, 0] and recompiles[4] > 0, recompiles  # 32 → 64: no recompile
    assert compiled[3]["compiled_graphs"] == compiled[0]["compiled_graphs"] > 0
    assert "recompiles" not in eager[0]
    keys = {k for k, _ in t.model.named_parameters()}
    assert "model.layers.0.self_attn.q_proj.weight" in keys and not any("_orig_mod" in k for k in keys)
