"""`parallel.compile`: each block compiled in place (kollm.train.parallel.apply_compile). On a tiny
model the compiled run's losses equal eager's within float tolerance, the checkpoint keys are
unchanged, and neither a batch-size ramp step (3 → 5 sequences: ragged micro-batches [2, 1] and
[2, 2, 1]), nor the phase change (sequence 32 → 64), nor a phase of micro-batch 1 compiles anything
new: the recompile count in metrics.jsonl stays at 0 and the first step's graph serves every step.
Greedy decoding with the compiled model (a KV cache: the blocks run eager) gives eager's tokens. CI
compiles with the aot_eager backend (dynamo's capture, guards and AOT autograd, no inductor code
generation: 4.5 min of a loaded 2-core box otherwise); KOLLM_COMPILE_BACKEND=inductor runs the
same test with inductor (bench/gpu_check.sh does, on the GPU)."""

import json
import os

import pytest
import torch
from synthetic import SyntheticLoader

from kollm.model.config import get_preset
from kollm.model.generate import GenerationConfig, generate
from kollm.model.transformer import build_model
from kollm.train.config import config_from_dict
from kollm.train.objectives.lm import LMObjective
from kollm.train.parallel import resolve_compile
from kollm.train.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def train(tmp_path, compile_: bool):
    cfg = config_from_dict({
        "output_dir": str(tmp_path / str(compile_)), "optimizer": {"lr": 3e-3},
        # ramp: 96 tokens (3 sequences of 32) → 256 over the first 200 tokens seen
        "batch": {"tokens": 4 * 64, "ramp_from": 96, "ramp_tokens": 200},
        "schedule": {"warmup_steps": 1}, "logging": {"progress": False},
        "checkpoint": {"every": 0, "export_hf": False}, "parallel": {"compile": compile_},
        "phases": [{"name": "short", "steps": 2, "mtp_alpha": 0.2, "data": {"seq_len": 32, "batch_size": 2}},
                   {"name": "long", "steps": 2, "mtp_alpha": 0.1, "data": {"seq_len": 64, "batch_size": 2}},
                   {"name": "single", "steps": 1, "mtp_alpha": 0.1, "data": {"seq_len": 64, "batch_size": 1}}]})
    torch.manual_seed(0)
    t = Trainer(cfg, build_model(get_preset("tiny-sandwich-mtp")), LMObjective("xlda"), SyntheticLoader())
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
    # the ramp and the phases really changed the micro-batches: [2, 1], [2, 2, 1], [2, 2] x 2, [1] x 4
    assert [h["micro_batches"] for h in compiled] == [2, 3, 2, 2, 4]
    assert [h["tokens"] for h in compiled] == [96, 256, 512, 768, 1024]  # 3, 5, 4, 4, 4 sequences
    for e, c in zip(eager, compiled):  # fp32: inductor reorders reductions, nothing else
        assert c["loss"] == pytest.approx(e["loss"], rel=1e-4)
        assert c["grad_norm"] == pytest.approx(e["grad_norm"], rel=1e-3)
    logged = [json.loads(line) for line in (tmp_path / "True" / "metrics.jsonl").read_text().splitlines()]
    assert [r["recompiles"] for r in logged] == [0] * 5  # ramp step, phase change, micro-batch 1: no recompile
    assert len({r["compiled_graphs"] for r in logged}) == 1 and logged[0]["compiled_graphs"] > 0
    assert "recompiles" not in eager[0]
    keys = {k for k, _ in t.model.named_parameters()}
    assert "model.layers.0.self_attn.q_proj.weight" in keys and not any("_orig_mod" in k for k in keys)

    # Decoding with the trained, compiled model (blocks eager under a KV cache) gives eager's tokens.
    model = t.model.eval()
    plain = build_model(model.config)
    plain.load_state_dict(model.state_dict())
    prompt = [[5, 6, 7, 8]]
    gcfg = GenerationConfig(max_new_tokens=6)
    assert generate(model, prompt, gcfg)[0] == generate(plain.eval(), prompt, gcfg)[0]


def test_compile_default_by_device(tmp_path):
    assert resolve_compile(None, torch.device("cpu")) is False
    assert resolve_compile(None, torch.device("cuda", 0)) is True
    assert resolve_compile(True, torch.device("cpu")) is True and resolve_compile(False, torch.device("cuda")) is False
    cfg = config_from_dict({"phases": [{"name": "a", "steps": 1}]})
    assert cfg.parallel.compile is None
    with pytest.raises(ValueError, match="parallel.compile"):
        config_from_dict({"phases": [{"name": "a", "steps": 1}], "parallel": {"compile": "yes"}})


def test_flex_block_mask_recompiles_are_bounded(monkeypatch):
    """CUDA's path, a FlexAttention BlockMask, forward only (FlexAttention has no CPU backward): a
    batch change reuses the graph (the mask's tensors and its mask_mod's ids are marked dynamic);
    the first new sequence length and the first micro-batch of 1 compile once each (the BlockMask
    holds its sequence lengths as ints; flex's kernel guards batch ≥ 2), later lengths reuse. So a
    run with FlexAttention logs at most 2 recompiles over its phases: the stated number."""
    from torch._dynamo.utils import counters

    from kollm.model import masks
    from kollm.train.parallel import apply_compile

    monkeypatch.setenv("KOLLM_COMPILE_BACKEND", os.environ.get("KOLLM_COMPILE_BACKEND", "aot_eager"))
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = build_model(get_preset("tiny-sandwich-mtp"))
    apply_compile(model)
    data, graphs = SyntheticLoader(), []
    with torch.no_grad():
        for seq, batch in [(128, 2), (128, 3), (256, 2), (256, 1), (384, 2), (384, 1)]:
            data.seq_len = seq
            b = data.next_batch(batch)
            mask = masks.build_mask("xlda", b["doc_ids"], b["lang_ids"], backend="flex")
            model(b["input_ids"], attn_mask=mask)
            graphs.append(counters["stats"]["unique_graphs"])
    first = graphs[0]  # (the first call also compiles once more: transformer.py sets its _FLEX global)
    assert [g - first for g in graphs] == [0, 0, 1, 2, 2, 2], graphs
