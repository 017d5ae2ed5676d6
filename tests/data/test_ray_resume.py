"""Resuming `kollm data curate --executor ray` after a Ray worker dies mid-task.

On a local 2-CPU Ray cluster, prepare task 0 is held mid-task (a test-only pass-through step,
ray_cluster.Hold) and its Ray worker process is SIGKILLed by PID, every time it runs; task 1 raises
an exception; task 2 completes. What happens, as datatrove 0.10.1 does it: the killed task comes back
to the driver as a RayActorError, which datatrove resubmits (3 times); the raising task is not
resubmitted; the completed task is not re-executed; then kollm fails the run naming the unfinished
tasks (datatrove alone would wait for them forever). The same run again skips the completed task
(its completion marker) and executes only tasks 0 and 1, and the result equals the local executor's
document for document."""

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from curate_corpus import LOOSE, read_rows, write_corpus  # noqa: E402
from ray_cluster import Hold, in_private_netns  # noqa: E402

from kollm.data import pipeline  # noqa: E402
from kollm.data.pipeline import RAY_RETRIES, CurateConfig, TasksIncomplete, run_curation  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HELD, FAILS = 0, 1  # the prepare task whose worker is killed, the one that raises
RESUBMITS = 3  # datatrove 0.10.1's RayPipelineExecutor: max_resubmits


def _executions(control: Path) -> list[int]:
    log = control / "executions.log"
    return sorted(int(line.split()[0]) for line in log.read_text().splitlines()) if log.is_file() else []


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _killer(control: Path, completions: Path, others: list[int], stop: threading.Event, killed: list) -> None:
    """Kill the Ray worker of every held attempt once the other tasks have completed."""
    while not stop.is_set():
        for held in sorted(control.glob("held-*")):
            task_pid, worker_pid = map(int, held.read_text().split())
            if task_pid in (k[0] for k in killed):
                continue
            while not all((completions / f"{r:05d}").is_file() for r in others) and not stop.is_set():
                time.sleep(0.05)
            cmd = _cmdline(worker_pid)
            # The worker dies as on a lost node or the OOM killer: the Ray worker process and the
            # process it forked to run the task (killing only the worker leaves the task running
            # with the worker's connection, so Ray sees the death only when the task ends).
            os.kill(worker_pid, signal.SIGKILL)
            os.kill(task_pid, signal.SIGKILL)
            killed.append((task_pid, worker_pid, cmd))
        time.sleep(0.05)


@pytest.mark.slow
def test_killed_ray_worker_resumes_to_the_local_result(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    if not in_private_netns(__file__, "test_killed_ray_worker_resumes_to_the_local_result"):
        return
    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in")
    for f in sorted((tmp_path / "in").glob("*.jsonl")):  # 4 files for 3 tasks
        lines = f.read_text(encoding="utf-8").splitlines(keepends=True)
        (tmp_path / "in" / f"{f.stem}a.jsonl").write_text("".join(lines[:40]), encoding="utf-8")
        (tmp_path / "in" / f"{f.stem}b.jsonl").write_text("".join(lines[40:]), encoding="utf-8")
        f.unlink()
    base = {"inputs": [str(tmp_path / "in")], "tasks": 3, "workers": 2, "filters": LOOSE,
            "dedup": {"num_buckets": 2}}
    # One local worker: the same documents as two (test_pipeline), without forking a pool (~12 s here).
    local_report = run_curation(CurateConfig.from_dict({**base, "workers": 1, "output": str(tmp_path / "local")}))
    local = read_rows(tmp_path / "local")

    control = tmp_path / "control"
    control.mkdir()
    build = pipeline.build_stages

    def with_hold(cfg):
        stages = build(cfg)
        stages["prepare"].insert(1, Hold(str(control), HELD, FAILS))  # after the reader: mid-task
        return stages

    monkeypatch.setattr(pipeline, "build_stages", with_hold)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # The workers import kollm from src/ and Hold from tests/data/.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT / "src"), str(Path(__file__).parent),
                                                      os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, object_store_memory=100 << 20,
             log_to_driver=False)
    out = tmp_path / "ray"
    cfg = CurateConfig.from_dict({**base, "output": str(out), "executor": "ray",
                                  "executor_options": {"mem_per_cpu_gb": 0.25}})
    stop, killed = threading.Event(), []
    try:
        # Run 1: task 0's worker is killed every time it runs, task 1 raises.
        (control / "hold").touch()
        killer = threading.Thread(target=_killer, args=(control, out / "logs" / "prepare" / "completions", [2],
                                                         stop, killed), daemon=True)
        killer.start()
        with pytest.raises(TasksIncomplete, match=r"stage 'prepare': 2 of 3 tasks did not complete: \[0, 1\]"):
            run_curation(cfg)
        stop.set()
        killer.join(timeout=10)
        assert len(killed) == 1 + RESUBMITS, killed
        for _, _, cmd in killed:
            assert cmd.startswith("ray::RankWorker"), cmd  # a Ray worker process (datatrove's actor)
        # Only the killed task was re-executed; the raising one was not; the completed one is marked.
        assert _executions(control) == [0] * (1 + RESUBMITS) + [1, 2]
        assert sorted(p.name for p in (out / "logs" / "prepare" / "completions").iterdir()) == ["00002"]
        stats = (out / "logs" / "prepare" / "stats" / "00002.json").stat().st_mtime_ns
        assert not (out / "logs" / "buckets").exists()  # the run stopped at the failed stage

        # Run 2, the same command: task 2 is skipped, tasks 0 and 1 run, the later stages follow.
        (control / "hold").unlink()
        report = run_curation(cfg)
    finally:
        stop.set()
        ray.shutdown()
    assert _executions(control) == [0] * (2 + RESUBMITS) + [1, 1, 2]
    assert (out / "logs" / "prepare" / "stats" / "00002.json").stat().st_mtime_ns == stats
    assert read_rows(out) == local
    for key in ("steps", "malformed", "keep_thresholds", "quality_histogram"):
        assert report[key] == local_report[key], key


def test_ray_executor_retry_policy_is_datatroves_alone(tmp_path):
    """Ray's actor restarts and method retries are pinned to 0 (datatrove resubmits crashed tasks);
    a user's own ray_remote_kwargs still win."""
    pytest.importorskip("ray")
    (tmp_path / "a.jsonl").write_text('{"text": "hello"}\n')
    base = {"inputs": [str(tmp_path)], "output": str(tmp_path / "o"), "executor": "ray"}
    stages = pipeline.build_stages(CurateConfig.from_dict(base))
    executor = pipeline._executor(CurateConfig.from_dict(base), "prepare", stages["prepare"], 1, None)
    assert executor.ray_remote_kwargs == RAY_RETRIES == {"max_restarts": 0, "max_task_retries": 0}
    mine = {**base, "executor_options": {"ray_remote_kwargs": {"max_restarts": 2, "scheduling_strategy": "SPREAD"}}}
    executor = pipeline._executor(CurateConfig.from_dict(mine), "prepare", stages["prepare"], 1, None)
    assert executor.ray_remote_kwargs == {"max_restarts": 2, "max_task_retries": 0, "scheduling_strategy": "SPREAD"}
