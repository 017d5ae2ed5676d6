"""`torchrun --nproc_per_node 2 -m kollm.cli dpo` (gloo, CPU) under ddp and fsdp: each rank computes
its share of the reference log-probs, rank 0 stores one file, and the loss curve equals the
single-process run's (the two ranks' pairs of a step are the single process's pairs of that step)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow]
SPECIALS = ["<pad>", "<s>", "</s>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def _run(args, torchrun=False):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2"] \
        if torchrun else [sys.executable]
    p = subprocess.run([*launcher, "-m", "kollm.cli", "dpo", *args], env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_ddp_and_fsdp_match_single_process(tmp_path, write_tiny_llama):
    rows = [{"prompt": f"Q: {a} + {a}?", "chosen": f" It is {2 * a}.", "rejected": f" It is {2 * a + 1}."}
            for a in range(16)]
    model = write_tiny_llama(tmp_path / "model", [r["chosen"] for r in rows] * 5, SPECIALS, vocab_size=280,
                             hidden=32, max_positions=64, init_std=0.1)
    (tmp_path / "data").mkdir()
    pairs = tmp_path / "data" / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"model": {"init_from": str(model)}, "data": {"train": str(pairs)},
           "dpo": {"epochs": 1, "pairs_per_step": 8, "micro_batch": 2, "max_length": 32, "ref_batch": 3},
           "optimizer": {"lr": 1e-2, "weight_decay": 0.0}, "schedule": {"kind": "cosine", "warmup_steps": 1},
           "checkpoint": {"export_hf": False}, "logging": {"progress": False}}
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    _run([str(path), "--set", f"output_dir={tmp_path / 'single'}"])
    want = losses(tmp_path / "single")
    assert len(want) == 2 and want[0] == pytest.approx(math.log(2), abs=1e-6)
    for mode in ("ddp", "fsdp"):
        (stored,) = (tmp_path / "data").glob("pairs.jsonl.ref-*.pt")
        stored.unlink()  # each distributed run computes the reference itself
        p = _run([str(path), "--set", f"output_dir={tmp_path / mode}", "--set", f"parallel.mode={mode}"], True)
        assert losses(tmp_path / mode) == pytest.approx(want, rel=1e-5), mode  # float32, other reduction order
        assert p.stderr.count("reference log-probs stored in") == 1  # computed by both ranks, written once
    assert len(list((tmp_path / "data").glob("pairs.jsonl.ref-*.pt"))) == 1
