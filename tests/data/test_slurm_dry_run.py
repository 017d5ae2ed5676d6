"""`kollm data curate --executor slurm --dry-run`: the sbatch scripts datatrove would submit are written,
not submitted; every stage is there with its partition, time, CPUs and array size, each waits on the
stage before it, the scripts activate the venv and launch the pickled executors under the output's
absolute paths. Then the pickles are run as Slurm would run the array tasks (SLURM_ARRAY_TASK_ID),
stage after stage, and give the local executor's documents."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dill
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from curate_corpus import LOOSE, read_rows, write_corpus  # noqa: E402

from kollm.cli import main as kollm_main  # noqa: E402
from kollm.data.pipeline import CurateConfig, run_curation  # noqa: E402


def test_dry_run_writes_the_scripts_and_they_curate_as_local(tmp_path, monkeypatch, capsys):
    (tmp_path / "in").mkdir()
    write_corpus(tmp_path / "in")
    base = {"inputs": [str(tmp_path / "in")], "tasks": 2, "workers": 2, "filters": LOOSE,
            "dedup": {"num_buckets": 2}}
    run_curation(CurateConfig.from_dict({**base, "output": str(tmp_path / "local")}))
    local = read_rows(tmp_path / "local")
    assert 60 < len(local) < 132

    out = tmp_path / "slurm-out"
    cfg = {**base, "output": str(out), "executor": "slurm",
           "executor_options": {"partition": "cpu", "time": "2:00:00", "cpus_per_task": 3,
                                "venv_path": "/opt/kollm/.venv/bin/activate"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert kollm_main(["data", "curate", "--config", str(tmp_path / "c.yaml"), "--dry-run"]) == 0
    assert "submit.sh" in capsys.readouterr().out
    assert not (out / "data").exists()  # nothing ran

    jobs = json.loads((out / "slurm" / "jobs.json").read_text())
    # each stage, then the job merging its stats; in pipeline order
    names = [re.sub(r"^\d\d-", "", j["script"]).removesuffix(".sbatch") for j in jobs]
    assert names == [f"kollm-curate-{s}{m}" for s in ("prepare", "buckets", "decide", "write")
                     for m in ("", "-merge-stats")]
    stage_jobs = jobs[0::2]
    assert stage_jobs[0]["dependency"] is None
    for before, job in zip(stage_jobs, stage_jobs[1:]):  # each stage waits for the previous one to succeed
        assert job["dependency"] == f"afterok:${{{before['job']}}}", job
    for stage, merge in zip(stage_jobs, jobs[1::2]):
        assert merge["dependency"] == f"afterok:${{{stage['job']}}}"
    for job, stage, array in zip(stage_jobs, ("prepare", "buckets", "decide", "write"), ("0-1%2", "0-1%2", "0-0%1",
                                                                                         "0-1%2")):
        script = (out / "slurm" / job["script"]).read_text()
        directives = dict(re.findall(r"^#SBATCH --([\w-]+)=?(.*)$", script, re.M))
        assert directives["partition"] == "cpu" and directives["time"] == "2:00:00"
        assert directives["cpus-per-task"] == "3" and directives["array"] == array, directives
        assert directives["job-name"] == f"kollm-curate-{stage}"
        assert "source /opt/kollm/.venv/bin/activate" in script
        pik = out.resolve() / "logs" / stage / "executor.pik"
        assert f"launch_pickled_pipeline {pik}" in script and pik.is_file()
    submit = (out / "slurm" / "submit.sh").read_text()
    assert 'JOB_03=$(sbatch --parsable --export=ALL,RUN_OFFSET=0 "--dependency=afterok:${JOB_01}" ' \
           '03-kollm-curate-buckets.sbatch' in submit
    assert subprocess.run(["bash", "-n", str(out / "slurm" / "submit.sh")]).returncode == 0

    assert "--dependency" not in (out / "slurm" / jobs[1]["script"]).read_text()
    assert '"--dependency=afterok:${JOB_01}" 02-kollm-curate-prepare-merge-stats.sbatch' in submit

    # Run the array tasks as Slurm would: each stage's tasks in turn from its pickled executor, on a
    # "node" whose scontrol names itself.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "scontrol").write_text("#!/bin/sh\necho localhost\n")
    (tmp_path / "bin" / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_NODELIST", "localhost")
    for var in ("NODE_RANK", "EXECUTOR", "NODE_IPS", "CPUS_PER_TASK", "MEM_PER_CPU", "GPUS_ON_NODE"):
        monkeypatch.setenv(f"DATATROVE_{var}", "")  # datatrove sets them in-process; restored after the test
    for stage, array in (("prepare", 2), ("buckets", 2), ("decide", 1), ("write", 2)):
        executor = dill.loads((out / "logs" / stage / "executor.pik").read_bytes())
        for task in range(array):
            monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
            monkeypatch.setattr(executor, "requeue_signals", ())
            executor.run()
    assert read_rows(out) == local
