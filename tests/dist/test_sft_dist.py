"""`torchrun --nproc_per_node 2 -m kollm.cli sft` (gloo, CPU, DDP) logs the loss and validation-loss
curve of one process on the same config: the ranks deal out slices of the same global batches of
packed conversations and the loss is the global token mean of trained targets."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))

from sft_fixtures import make_model_dir, math_rows, sft_config, write_jsonl  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:torch.distributed is disabled")]


def test_ddp_sft_matches_single_process(tmp_path):
    model = make_model_dir(tmp_path / "model")
    train = write_jsonl(tmp_path / "train.jsonl", math_rows(40))
    val = write_jsonl(tmp_path / "val.jsonl", math_rows(9, offset=100))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    curves = {}
    for mode in ("single", "ddp"):
        # 4 rows of 256 per step: one process in two micro-batches of 2, each of two ranks 2
        cfg = sft_config(model, train, tmp_path / mode, steps=4, seq_len=256, batch_size=2, validation=val,
                         every=0, val_every=2, mode=mode)
        cfg["batch"]["tokens"] = 4 * 256
        cfg["validation"]["batch_size"] = 2
        (tmp_path / f"{mode}.yaml").write_text(yaml.safe_dump(cfg))
        launcher = [sys.executable, "-m", "kollm.cli"] if mode == "single" else \
            [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "kollm.cli"]
        proc = subprocess.run([*launcher, "sft", str(tmp_path / f"{mode}.yaml")], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        rows = [json.loads(line) for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        curves[mode] = rows
    single, ddp = curves["single"], curves["ddp"]
    assert [r["trained_tokens"] for r in ddp] == [r["trained_tokens"] for r in single]  # the same global batches
    for key in ("loss", "val_loss"):
        a = torch.tensor([r[key] for r in single if key in r])
        b = torch.tensor([r[key] for r in ddp if key in r])
        assert len(a) == (4 if key == "loss" else 2)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=0)
    assert (tmp_path / "ddp" / "hf" / "latest" / "config.json").is_file()
