"""`kollm data curate --executor slurm --dry-run`: the sbatch scripts datatrove would submit, written
to `<output>/slurm/` instead of submitted, so they can be read (and submitted by hand) first.

datatrove's SlurmPipelineExecutor builds each script and hands it to the module-level
`launch_slurm_job(script, job_id_retriever, *sbatch_args)`, which calls `sbatch` and parses the job
id. Here that function is replaced for the duration of the run: it saves the script as
`NN-<job name>[-merge-stats].sbatch`, records the sbatch arguments (array offset, `--dependency=afterok:…`) and
returns a shell variable (`$JOB_NN`) as the job id, so the dependencies datatrove computes name the
jobs they wait for. `submit.sh` then submits them in order with real ids (`sbatch --parsable`).
Everything else is datatrove's own launch: the pickled executors and `ranks_to_run.json` are
written under `<output>/logs/<stage>/`, exactly what the scripts' `launch_pickled_pipeline` reads.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from unittest import mock


@contextlib.contextmanager
def record_sbatch(folder: str | Path) -> Iterator[list[dict]]:
    """Within the block, datatrove's Slurm submissions are written under `folder`, not submitted."""
    from datatrove.executor import slurm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.sbatch"):
        old.unlink()
    jobs: list[dict] = []

    def launch(script: str, _retriever, *args: str) -> str:
        n = len(jobs) + 1
        name = re.search(r"^#SBATCH --job-name=(.+)$", script, re.M)
        merge = "-merge-stats" if "\nmerge_stats " in script else ""  # datatrove's job after each stage
        path = folder / f"{n:02d}-{name.group(1) if name else 'job'}{merge}.sbatch"
        # A dependency comes on the command line (the stages) or as a directive (datatrove's
        # stats-merging jobs); a directive cannot hold ${JOB_NN}, so it moves to submit.sh's line.
        deps = [a.split("=", 1)[1] for a in args if a.startswith("--dependency=")]
        directive = re.findall(r"^#SBATCH --dependency=(.+)$", script, re.M)
        if directive:
            script = re.sub(r"^#SBATCH --dependency=.+\n", "", script, flags=re.M)
            args = (*args, f"--dependency={directive[0]}")
            deps += directive
        path.write_text(script)
        jobs.append({"job": f"JOB_{n:02d}", "script": path.name, "args": list(args),
                     "dependency": deps[0] if deps else None})
        return f"${{JOB_{n:02d}}}"

    with mock.patch.object(slurm, "launch_slurm_job", launch):
        yield jobs
    lines = ["#!/bin/bash", "# Written by `kollm data curate --dry-run`: submits the jobs below in order,",
             "# each waiting on the ones its --dependency names.", "set -euo pipefail", 'cd "$(dirname "$0")"']
    for j in jobs:
        # the dependency holds ${JOB_NN}: double quotes let the shell substitute the real ids
        args = " ".join(f'"{a}"' if "${" in a else shlex.quote(a) for a in j["args"])
        lines.append(f"{j['job']}=$(sbatch --parsable {args} {j['script']} | cut -d';' -f1)")
        lines.append(f'echo "{j["script"]}: job ${{{j["job"]}}}"')
    (folder / "submit.sh").write_text("\n".join(lines) + "\n")
    (folder / "jobs.json").write_text(json.dumps(jobs, indent=2))


__all__ = ["record_sbatch"]
