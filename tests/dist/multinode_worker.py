"""Run by test_multinode.py under two `torchrun --nnodes 2 --nproc-per-node 1` launches (c10d
rendezvous), so each node holds one rank with LOCAL_RANK 0: the layout of a real multi-node job.

argv: PHASE WORKDIR OUT. PHASE `first`: DDP and FSDP train the run of dist_worker.run_config to the
end, and a second run of each stops at its mid-run checkpoint (as a job killed by the scheduler
would); then each node trains in a directory of its own (an unshared filesystem), which must fail
with a clear error on every rank. PHASE `resume`: a new pair of launches resumes those runs to the end. Every rank writes
`OUT.rank<r>.json` with its losses and the launcher's view of it (node, local rank)."""

import json
import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "train"))
sys.path.insert(0, str(HERE))
from dist_worker import run_config  # noqa: E402
from synthetic import SyntheticLoader  # noqa: E402

from kollm.model.config import get_preset  # noqa: E402
from kollm.model.transformer import build_model  # noqa: E402
from kollm.train.config import config_from_dict  # noqa: E402
from kollm.train.parallel import init_distributed  # noqa: E402
from kollm.train.objectives.lm import LMObjective  # noqa: E402
from kollm.train.trainer import Trainer  # noqa: E402

MODES = ("ddp", "fsdp")


def trainer(mode: str, out_dir: Path, info) -> Trainer:
    torch.manual_seed(0)
    cfg = config_from_dict(run_config(mode, str(out_dir)))
    return Trainer(cfg, build_model(get_preset("tiny-sandwich-mtp")), LMObjective("xlda"),
                   SyntheticLoader(rank=info.rank, world_size=info.world), info)


def main() -> None:
    phase, workdir, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    info = init_distributed()
    env = {k: os.environ.get(k) for k in ("GROUP_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE")}
    result = {"rank": info.rank, "local_rank": info.local_rank, "env": env, "pid": os.getpid(),
              "host": socket.gethostname()}
    for mode in MODES:
        if phase == "first":
            result[mode] = [h["loss"] for h in trainer(mode, workdir / mode, info).fit()]
            t = trainer(mode, workdir / (mode + "-r"), info)
            t.total_steps = 2  # killed after the mid-run checkpoint
            t.fit()
        else:
            result[mode + "+resume"] = [h["loss"] for h in trainer(mode, workdir / (mode + "-r"), info).fit(resume=True)]
    if phase == "first":
        # Each node in its own directory with a relative output_dir: nodes that do not share the
        # checkpoint filesystem. The checkpoint must fail on every rank, not publish half a checkpoint.
        os.chdir(workdir / f"node{env['GROUP_RANK']}")
        try:
            trainer("ddp", Path("unshared"), info).fit()
            result["unshared"] = None
        except RuntimeError as e:
            result["unshared"] = str(e)
    Path(f"{out}.rank{info.rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
