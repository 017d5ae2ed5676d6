"""ZeRO-1 as the Trillion report ran it (bf16 weights on every rank, fp32 master weights and AdamW
moments sharded over 2 gloo ranks), killed for real: `torchrun -m kollm.cli pretrain` (three
phases) run straight through, and again SIGKILLed — the launcher and both ranks at once, as a lost
node leaves them, no handler runs — once the metrics show a step past a checkpoint, then resumed
with --resume. The resumed run must log the same metrics.jsonl rows (timing keys aside) and export
the same tensors bit for bit. (test_parallel.py: zero1 bf16 against one process over 20 steps.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from kollm.data.shards import ShardWriter

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:torch.distributed is disabled")]

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny-pretrain.yaml"
TIMING = {"time", "tokens_per_s", "mfu", "peak_mem_mb"}
KILL_AFTER = 5  # steps logged before the kill: past the checkpoint at step 4, before the one at 8


def config(tmp: Path) -> Path:
    for lang, seed in (("en", 0), ("ko", 1)):
        rng = np.random.default_rng(seed)
        with ShardWriter(tmp / "shards" / lang / "part-00000", lang, "bytes") as w:
            for _ in range(200):
                w.add(rng.integers(0, 256, size=int(rng.integers(8, 200))).astype(np.uint32), float(rng.random()))
    raw = yaml.safe_load(RECIPE.read_text())
    raw["data"]["shards"] = str(tmp / "shards")
    for phase, steps in zip(raw["phases"], (6, 3, 3)):  # stable → anneal → long context (seq_len 64 → 128)
        phase["steps"] = steps
    raw["checkpoint"]["every"] = 4
    raw["parallel"] = {"mode": "zero1", "mixed_precision": "bf16"}
    raw["logging"]["progress"] = False
    (tmp / "c.yaml").write_text(yaml.safe_dump(raw))
    return tmp / "c.yaml"


def launch(cfg: Path, out: Path, *extra: str) -> subprocess.Popen:
    torchrun = Path(sys.executable).parent / "torchrun"
    return subprocess.Popen([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "kollm.cli", "pretrain",
                             str(cfg), "--set", f"output_dir={out}", *extra],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                            stderr=open(out.parent / f"{out.name}.log", "a"), start_new_session=True)


def finish(p: subprocess.Popen, out: Path) -> None:
    try:
        assert p.wait(timeout=300) == 0, (out.parent / f"{out.name}.log").read_text()[-4000:]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)


def steps_logged(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def metrics(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING and not k.endswith("_s")}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def exported(run: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for f in sorted((run / "hf" / "latest").glob("*.safetensors")):
        tensors |= load_file(f)
    return tensors


def test_zero1_bf16_killed_and_resumed_is_bit_identical(tmp_path):
    cfg = config(tmp_path)
    full, killed = tmp_path / "full", tmp_path / "killed"
    finish(launch(cfg, full), full)
    want = metrics(full)
    assert [m["step"] for m in want] == list(range(1, 13))

    p = launch(cfg, killed)
    try:
        deadline = time.monotonic() + 1200  # a hang guard: a loaded machine takes minutes to start torchrun
        while steps_logged(killed) < KILL_AFTER and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # torchrun and its ranks
    assert p.wait(timeout=60) == -signal.SIGKILL
    logged = steps_logged(killed)
    assert KILL_AFTER <= logged < 12 and not (killed / "hf" / "latest").exists(), f"killed after {logged} steps"
    finish(launch(cfg, killed, "--resume"), killed)

    got = metrics(killed)
    assert [m["step"] for m in got] == [m["step"] for m in want], f"killed after {logged} steps"
    for a, b in zip(want, got):
        assert a == b, f"killed after {logged} steps: step {a['step']}: " + \
            ", ".join(f"{k} {a.get(k)} != {b.get(k)}" for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    ta, tb = exported(full), exported(killed)
    assert ta.keys() == tb.keys() and ta
    differ = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not differ, f"killed after {logged} steps: {len(differ)} of {len(ta)} exported tensors differ: {differ[:3]}"
