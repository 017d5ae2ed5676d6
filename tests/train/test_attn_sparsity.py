"""The attention mask in a training step: built once per micro-batch and shared by every layer and
the MTP block, and its sparsity logged in metrics.jsonl (`attn_sparsity`, `attn_block_sparsity`)
equal to the dense mask's count over the step's sequences."""

import json

import pytest
import torch
from synthetic import SyntheticLoader

from kollm.model import masks
from kollm.model.config import get_preset
from kollm.model.transformer import build_model
from kollm.train.config import config_from_dict
from kollm.train.objectives.lm import LMObjective
from kollm.train.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def test_mask_built_once_per_micro_batch_and_sparsity_logged(tmp_path, monkeypatch):
    builds = []
    real_build = masks.build_mask
    monkeypatch.setattr(masks, "build_mask", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    cfg = config_from_dict({
        "output_dir": str(tmp_path), "batch": {"tokens": 6 * 32}, "logging": {"progress": False},
        "checkpoint": {"every": 0, "export_hf": False}, "schedule": {"warmup_steps": 1},
        "phases": [{"name": "a", "steps": 2, "mtp_alpha": 0.2, "data": {"seq_len": 32, "batch_size": 4}}]})
    torch.manual_seed(0)
    model = build_model(get_preset("tiny-sandwich-mtp"))  # 4 blocks + the MTP block
    history = Trainer(cfg, model, LMObjective("xlda"), SyntheticLoader()).fit()
    assert [h["micro_batches"] for h in history] == [2, 2]  # 6 sequences: [3, 3]
    assert len(builds) == 4  # one mask per micro-batch forward, not one per layer (5 would be per step)

    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    batch = SyntheticLoader().next_batch(12)  # the same 12 sequences the two steps drew
    dense = masks.dense_mask("xlda", batch["doc_ids"], batch["lang_ids"])[:, 0]
    per_seq = 1 - dense.sum((1, 2)).double() / 32**2
    for step, row in enumerate(logged):
        assert row["attn_sparsity"] == pytest.approx(per_seq[6 * step:6 * step + 6].mean().item(), rel=1e-6)
        assert row["attn_block_sparsity"] == 0.0  # 32 tokens: a single 128-tile, the diagonal one
    assert 0.5 < logged[0]["attn_sparsity"] < 0.9  # causal alone blocks (T − 1)/2T ≈ 0.48; XLDA more
