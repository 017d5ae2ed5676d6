"""recipes/slurm/pretrain.sbatch as Slurm would run it on a 2-node allocation: `scontrol`, `srun`
and the venv's `torchrun` are stand-ins on PATH (srun runs its command once per node with that
node's SLURM_NODEID), so the test reads the exact torchrun line each node gets. The launch itself
(two torchrun nodes meeting at a c10d rendezvous) is tests/dist/test_multinode.py."""

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "recipes" / "slurm" / "pretrain.sbatch"

SRUN = """#!/bin/bash
# srun --opt ... CMD ARGS: CMD once per node, as Slurm would, with that node's SLURM_NODEID.
while [[ $1 == --* ]]; do shift; done
for ((n = 0; n < SLURM_NNODES; n++)); do SLURM_NODEID=$n "$@" || exit $?; done
"""


def test_sbatch_launches_one_torchrun_per_node_at_one_rendezvous(tmp_path):
    bin_, venv = tmp_path / "bin", tmp_path / "venv" / "bin"
    bin_.mkdir()
    venv.mkdir(parents=True)
    (bin_ / "srun").write_text(SRUN)
    # One host per write, as a long node list comes: a reader that stops after the first line (head)
    # kills scontrol with SIGPIPE, which under the script's pipefail would fail the job.
    (bin_ / "scontrol").write_text('#!/bin/bash\n[ "$1 $2 $3" = "show hostnames gpu[07-08]" ] || exit 1\n'
                                   'echo gpu07; sleep 0.2; echo gpu08\n')
    (venv / "torchrun").write_text(f'#!/bin/bash\necho "$SLURM_NODEID $*" >> {tmp_path}/launched\n')
    for f in (bin_ / "srun", bin_ / "scontrol", venv / "torchrun"):
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}", "VENV": str(tmp_path / "venv"),
           "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242"}
    proc = subprocess.run(["bash", str(SBATCH), "recipes/dna-8b-cpt.yaml"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "launched").read_text().splitlines()
    rest = ("--nproc-per-node 8 --node-rank {n} --rdzv-backend c10d --rdzv-endpoint gpu07:29500 "
            "--rdzv-id 4242 --max-restarts 0 -m kollm.cli pretrain recipes/dna-8b-cpt.yaml --resume")
    assert lines == [f"{n} --nnodes 2 " + rest.format(n=n) for n in (0, 1)]
    assert (ROOT / "recipes" / "dna-8b-cpt.yaml").is_file()


def test_sbatch_directives_and_usage():
    text = SBATCH.read_text()
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, re.M))
    assert directives["ntasks-per-node"] == "1"  # one torchrun per node; it starts the node's ranks
    out = directives["output"]
    # Slurm does not create the --output directory (a job without it fails with no log): the usage says so.
    assert "/" in out and f"mkdir -p {out.rsplit('/', 1)[0]}" in text
    proc = subprocess.run(["bash", str(SBATCH)], cwd=ROOT, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "SLURM_JOB_NODELIST": "x"})
    assert proc.returncode != 0 and "usage: sbatch recipes/slurm/pretrain.sbatch CONFIG.yaml" in proc.stderr
