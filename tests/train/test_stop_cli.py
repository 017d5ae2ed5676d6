"""Stopping a real `kollm pretrain` from outside: SIGTERM (a scheduler's preemption notice) makes it
checkpoint at the step boundary and exit 143 with how to resume, no traceback; a SIGKILLed
`torchrun` launcher takes its ranks with it instead of leaving them training, and the checkpoint
directory holds only complete checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny-pretrain.yaml"
pytestmark = [pytest.mark.slow]


def long_run(shards: Path, out: Path, **extra) -> Path:
    """The tiny recipe with a stable phase too long to finish during the test."""
    raw = yaml.safe_load(RECIPE.read_text())
    raw["output_dir"], raw["data"]["shards"] = str(out), str(shards)
    raw["phases"][0]["steps"] = 100_000
    raw["checkpoint"] = {"every": 2, "keep": 100, "export_hf": False}
    raw["parallel"] = {"mode": extra.pop("mode", "single")}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def wait_for(cond, timeout: float, what: str, proc=None):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def metric_steps(run: Path) -> list[int]:
    f = run / "metrics.jsonl"
    if not f.is_file():
        return []
    return [json.loads(x)["step"] for x in f.read_text().splitlines() if x.endswith("}")]


def test_sigterm_checkpoints_and_says_how_to_resume(shards, tmp_path):
    run = tmp_path / "run"
    cfg = long_run(shards, run)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "kollm.cli", "pretrain", str(cfg)], env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(metric_steps(run)) >= 3, 240, "three steps", p)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err and "stopped by SIGTERM after step" in err and "--resume" in err
    last = metric_steps(run)[-1]
    ckpts = sorted((run / "checkpoints").iterdir())
    assert ckpts[-1].name == f"step-{last:08d}"  # the step it was in finished, then it saved
    assert json.loads((ckpts[-1] / "trainer.json").read_text())["step"] == last


def _children(pid: int) -> list[int]:
    out = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(d))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_ranks_stop_when_the_torchrun_launcher_is_killed(shards, tmp_path):
    run = tmp_path / "run"
    cfg = long_run(shards, run, mode="ddp")
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "kollm.cli",
                                 "pretrain", str(cfg)], env=env, text=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
    ranks: list[int] = []
    try:
        wait_for(lambda: (run / "checkpoints" / "step-00000002").is_dir(), 300, "the first checkpoint", launcher)
        ranks = _children(launcher.pid)
        assert len(ranks) == 2, ranks
        launcher.kill()
        launcher.wait()
        wait_for(lambda: not any(_alive(r) for r in ranks), 30, "the ranks to stop")
        seen = sorted(p.name for p in (run / "checkpoints").iterdir())
        time.sleep(2)
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == seen  # nobody writes any more
        for name in seen:  # complete ones only (a half-written one is a .tmp-step-* directory)
            if not name.startswith(".tmp"):
                d = run / "checkpoints" / name
                assert {"trainer.json", "rank-0.json", "rank-1.json", ".metadata"} <= {f.name for f in d.iterdir()}
    finally:
        for pid in ranks:  # only the ranks this test started
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
