"""Two nodes, for real: two `torchrun --nnodes 2 --nproc-per-node 1` launches meeting at a c10d
rendezvous on 127.0.0.1 (node 0 hosts it, as the first node of a Slurm job does), one rank each with
LOCAL_RANK 0, so anything keyed on the local rank instead of the global one shows up here.
DDP and FSDP give the single-process loss curve (the tolerance of test_parallel.py), every
checkpoint and every metrics line is written once (not once per node), and a second pair of
launches resumes the run killed at its mid-run checkpoint onto the uninterrupted curve. Nodes whose
output_dir is not shared fail on every rank with the reason instead of publishing half a checkpoint."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "train"))
sys.path.insert(0, str(HERE))

from dist_worker import run_config  # noqa: E402
from synthetic import SyntheticLoader  # noqa: E402

from kollm.model.config import get_preset  # noqa: E402
from kollm.model.transformer import build_model  # noqa: E402
from kollm.train.config import config_from_dict  # noqa: E402
from kollm.train.objectives.lm import LMObjective  # noqa: E402
from kollm.train.trainer import Trainer  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:torch.distributed is disabled")]
MODES = ("ddp", "fsdp")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_nodes(phase: str, work: Path) -> list[dict]:
    """Start node 0 and node 1 as two torchrun processes, as `srun` would on two hosts."""
    torchrun, port = Path(sys.executable).parent / "torchrun", free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for node in (0, 1):
        cmd = [str(torchrun), "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node),
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"kollm-{phase}",
               "--rdzv-conf", f"is_host={'true' if node == 0 else 'false'}", "--local-addr", "127.0.0.1",
               "--max-restarts", "0", str(HERE / "multinode_worker.py"), phase, str(work), str(work / phase)]
        log = open(work / f"{phase}-node{node}.log", "w")
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    for p, log in procs:
        try:
            p.wait(timeout=300)
        finally:
            log.close()
            if p.poll() is None:
                p.kill()
    logs = "\n".join((work / f"{phase}-node{n}.log").read_text()[-3000:] for n in (0, 1))
    assert all(p.returncode == 0 for p, _ in procs), logs
    return [json.loads((work / f"{phase}.rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("nodes")
    for node in (0, 1):
        (work / f"node{node}").mkdir()
    first = launch_two_nodes("first", work)
    return first, launch_two_nodes("resume", work), work


def single_process(out_dir: Path) -> list[float]:
    torch.manual_seed(0)
    cfg = config_from_dict(run_config("single", str(out_dir)))
    return [h["loss"] for h in Trainer(cfg, build_model(get_preset("tiny-sandwich-mtp")), LMObjective("xlda"),
                                       SyntheticLoader()).fit()]


def test_two_nodes_match_single_process_write_once_and_resume(runs, tmp_path):
    first, resumed, work = runs
    # Two nodes of one rank each: global ranks 0 and 1, both LOCAL_RANK 0, distinct agents.
    assert sorted(r["rank"] for r in first) == [0, 1]
    assert [r["local_rank"] for r in first] == [0, 0]
    assert sorted(r["env"]["GROUP_RANK"] for r in first) == ["0", "1"]
    assert all(r["env"]["LOCAL_WORLD_SIZE"] == "1" and r["env"]["WORLD_SIZE"] == "2" for r in first)
    # Nodes that do not share output_dir: every rank fails with the reason, no checkpoint is published.
    for r in first:
        assert "must be on a filesystem shared by all nodes" in (r["unshared"] or ""), r["unshared"]
    for node in (0, 1):
        assert not list((work / f"node{node}").rglob("step-*")) and not list((work / f"node{node}").rglob(".tmp-*"))
    single = single_process(tmp_path / "single")
    for mode in MODES:
        for r in first:  # every rank sees the global loss
            torch.testing.assert_close(torch.tensor(r[mode]), torch.tensor(single), rtol=2e-6, atol=0,
                                       msg=lambda m, mode=mode: f"{mode} on 2 nodes vs single process: {m}")
        # the second launch resumed from step 2 onto the uninterrupted curve
        for r in resumed:
            torch.testing.assert_close(torch.tensor(r[mode + "+resume"]), torch.tensor(first[0][mode][2:]),
                                       rtol=1e-6, atol=0, msg=lambda m, mode=mode: f"{mode} resumed: {m}")
        for run in (mode, mode + "-r"):
            root = work / run
            ckpts = sorted(root.rglob("step-*"))
            assert [c.name for c in ckpts] == ["step-00000002", "step-00000004"], ckpts
            assert not list(root.rglob(".tmp-step-*")), "a half-written checkpoint was left behind"
            for c in ckpts:
                # one trainer state, one file per global rank, one DCP shard per rank, one metadata,
                # one record of their CRC-32s
                names = sorted(p.name for p in c.iterdir())
                assert names == [".metadata", "__0_0.distcp", "__1_0.distcp", "checksums.json", "rank-0.json",
                                 "rank-1.json", "trainer.json"], names
                assert json.loads((c / "trainer.json").read_text())["world"] == 2
            metrics = [json.loads(line) for f in root.rglob("metrics.jsonl") for line in f.read_text().splitlines()]
            assert [m["step"] for m in metrics] == [1, 2, 3, 4], f"{run}: metrics written once per step"
