"""`torchrun --nproc_per_node 2 -m kollm.cli distill` (gloo, CPU) under fsdp with adaptive
off-policy at φ = 1: both ranks draw the same off-policy decision and generate with the same number
of decode steps (FSDP gathers the weights in every forward), so the run finishes instead of
hanging, and the generated batches are trained on (off_policy_prob 1, replay buffer filled)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))

from test_distill import _cfg, world  # noqa: E402, F401 (the fixture)

pytestmark = [pytest.mark.slow]


def test_fsdp_student_generation_in_lockstep(world, tmp_path):  # noqa: F811
    root, _ = world
    raw = _cfg(root, tmp_path / "run", off_policy_init=1.0, replay_ratio="constant", fresh_prob=1.0)
    raw["parallel"] = {"mode": "fsdp"}
    raw["phases"][0]["steps"] = 3
    raw["checkpoint"] = {"every": 0, "export_hf": False}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2"]
    p = subprocess.run([*torchrun, "-m", "kollm.cli", "distill", str(tmp_path / "c.yaml")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if r["step"] > 0]
    assert [r["step"] for r in trained] == [1, 2, 3]
    assert all(r["off_policy_prob"] == pytest.approx(1.0) for r in trained)
    assert trained[-1]["replay_size"] > 0 and rows[0]["step"] == 0 and "val_ce" in rows[0]
