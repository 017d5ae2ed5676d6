"""Helpers of the Ray cluster tests (tests/data/test_ray*.py).

`in_private_netns`: Ray binds its cluster to the host's network address, whatever it is told, so a
cluster test runs itself again inside a network namespace of its own (only loopback): none of the
cluster's traffic ever leaves 127.0.0.1.

`Hold`: a test-only datatrove step for the resume test. It passes documents through unchanged,
records every task execution (`executions.log`: rank, pid, time) and, while `<control>/hold`
exists, stops one task mid-way so the test can kill its Ray worker by PID and makes another raise. The Ray workers import
this module (tests/data on their PYTHONPATH): the pickled executor names the class by module."""

import fcntl
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

NETNS = "KOLLM_TEST_PRIVATE_NETNS"
HANG_S = 3600


def _loopback_up() -> None:
    """`ip link set lo up` without iproute2 (not in every CI image): a new namespace's loopback is down."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH22x", b"lo", 0)  # struct ifreq: name, flags, rest of the union
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, siocgifflags, ifreq))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


def in_private_netns(test_file: str, test_name: str) -> bool:
    """True inside the namespace (run the test); outside, run it there and return False (the
    caller returns), or skip where no namespace can be made (needs root and util-linux)."""
    if os.environ.get(NETNS) == "1":
        _loopback_up()
        return True
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{Path(test_file).resolve()}::{test_name}"]
    try:
        # The bound catches a hang, not slowness: with a busy process per core beside the suite (load
        # average 20 on 2 cores) this run once took more than 900 s, so the limit is an hour, and a run
        # that reaches it fails with what the inner test printed.
        proc = subprocess.run(["unshare", "--net", *cmd], env={**os.environ, NETNS: "1"},
                              capture_output=True, text=True, timeout=HANG_S)
    except FileNotFoundError:
        pytest.skip("no `unshare` (util-linux): the Ray cluster tests run only in a private network namespace")
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{test_name} ran past {HANG_S} s inside its network namespace (a hang); it printed:\n"
                    f"{(e.stdout or '')[-4000:]}{(e.stderr or '')[-2000:]}")
    if proc.returncode != 0 and "Operation not permitted" in proc.stderr:
        pytest.skip("cannot create a network namespace here (needs root): the Ray cluster tests run only "
                    "inside one, since Ray binds the host's address")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return False


class Hold(PipelineStep):
    type = "test"
    name = "hold"

    def __init__(self, control: str, rank: int, fail_rank: int | None = None, timeout: float = 120.0):
        super().__init__()
        self.control, self.rank, self.fail_rank, self.timeout = control, rank, fail_rank, timeout

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        ctl = Path(self.control)
        with open(ctl / "executions.log", "a") as f:
            f.write(f"{rank} {os.getpid()} {time.time()}\n")
        if rank == self.fail_rank and (ctl / "hold").exists():
            raise RuntimeError(f"task {rank} fails (test)")  # an application error, not a crash
        for i, doc in enumerate(data):
            if i == 1 and rank == self.rank and (ctl / "hold").exists():
                # Mid-task (one document already passed on): say who we are, then wait to be killed.
                # The process running the task is a child of the Ray worker (datatrove's RankWorker
                # runs ranks in a multiprocess pool), so both pids are written.
                tmp = ctl / f".held-{os.getpid()}"
                tmp.write_text(f"{os.getpid()} {os.getppid()}")
                tmp.rename(ctl / f"held-{os.getpid()}")
                deadline = time.time() + self.timeout
                while time.time() < deadline:
                    time.sleep(0.05)
                raise TimeoutError(f"task {rank} was held for {self.timeout} s and nobody killed it")
            yield doc
