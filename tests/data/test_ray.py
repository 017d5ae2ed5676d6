"""`kollm data curate --executor ray` on a real Ray cluster: the test starts a local one on this
machine (2 CPUs), runs the curation CLI in another process connected with `--ray-address`, and
checks it gives the local executor's documents and report counts exactly; then stops the cluster.
Without ray installed the Ray path fails with a message naming the `ray` extra."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from curate_corpus import LOOSE, read_rows, write_corpus  # noqa: E402
from ray_cluster import in_private_netns  # noqa: E402

from kollm.data.pipeline import CurateConfig, run_curation  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_without_ray_the_error_names_the_extra(tmp_path, monkeypatch):
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find(name, *a))
    (tmp_path / "a.jsonl").write_text('{"text": "hello"}\n')
    cfg = CurateConfig.from_dict({"inputs": [str(tmp_path)], "output": str(tmp_path / "o"), "executor": "ray"})
    with pytest.raises(ValueError, match=r"pip install 'kollm\[ray\]'"):
        run_curation(cfg)


@pytest.mark.slow
def test_ray_cluster_curates_as_the_local_executor(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    if not in_private_netns(__file__, "test_ray_cluster_curates_as_the_local_executor"):
        return
    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in")
    base = {"inputs": [str(tmp_path / "in")], "tasks": 2, "workers": 2, "filters": LOOSE,
            "dedup": {"num_buckets": 2}}
    # One local worker: the same documents as two (test_pipeline), without forking a pool (~12 s here).
    local_report = run_curation(CurateConfig.from_dict({**base, "workers": 1, "output": str(tmp_path / "local")}))
    local = read_rows(tmp_path / "local")

    # A throwaway test cluster: no token auth (Ray 2.60 enables it for a new local cluster and a
    # second process would need the token file).
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("PYTHONPATH", f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A cluster of its own, on this machine: workers inherit this environment (kollm importable from
    # src/). Ray 2.60's ray.init binds the GCS to the host's address even given _node_ip_address.
    ctx = ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, object_store_memory=100 << 20,
                   log_to_driver=False)
    try:
        address = ctx.address_info["gcs_address"]
        cfg = {**base, "output": str(tmp_path / "ray"), "executor": "ray",
               "executor_options": {"mem_per_cpu_gb": 0.25}}
        (tmp_path / "c.json").write_text(json.dumps(cfg))  # YAML is a superset of JSON
        proc = subprocess.run([sys.executable, "-m", "kollm.cli", "data", "curate", "--config", str(tmp_path / "c.json"),
                               "--ray-address", address], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    finally:
        ray.shutdown()
    assert read_rows(tmp_path / "ray") == local
    ray_report = json.loads((tmp_path / "ray" / "report.json").read_text())
    for key in ("steps", "malformed", "keep_thresholds", "quality_histogram"):
        assert ray_report[key] == local_report[key], key
