"""Run untrusted generated programs (HumanEval / MBPP completions) and report pass or fail.

The same job as OpenAI human-eval's `execution.py` and lm-eval's `code_eval` (HF evaluate), but
contained by the operating system, as production code-evaluation services do, through bubblewrap
(`bwrap`, the sandbox Flatpak uses; Debian package `bubblewrap`). An in-process Python hook is no
boundary: a program can undo anything its own interpreter set up. Each program gets (docs/sandbox.md):

- a new mount namespace whose root is an empty tmpfs holding read-only binds of /usr (+ /bin, /lib
  links), the dynamic-loader cache and the interpreter's own prefix, nothing else: no /home, /root,
  /work, /etc/passwd, /sys; the only writable place is a size-limited tmpfs at /tmp (cwd, HOME);
- its own network namespace (no interface but loopback: nothing outside is reachable, not even the
  host's 127.0.0.1), PID namespace with that namespace's /proc only (no other process is visible,
  signalable or readable, /proc/<evaluator>/environ included), IPC and UTS namespaces;
- an unprivileged user: uid/gid 65534 with every capability dropped and no_new_privs (as root,
  `setpriv` from util-linux drops them inside the sandbox; otherwise a user namespace maps 65534 to
  the caller), so the read-only binds hold and no device node can be made;
- an empty environment, rlimits (CPU seconds, address space, file size, open files, processes,
  no core dumps) and a wall-clock timeout after which the sandbox's init is killed, which takes
  every process in its PID namespace with it (double-forked, setsid'd children included); when the
  program's main process exits, its leftovers die the same way.

Where bwrap is missing or cannot create namespaces (some containers), nothing is contained and
code tasks refuse to run unless the caller opts in (`allow_unsafe=True`, `kollm eval
--allow-unsafe-code`, lm-eval's `--confirm_run_unsafe_code`); the result then says sandbox "none".
stdout/stderr go to files of the evaluator (bounded by the file-size limit); their tails come back.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

NOBODY = 65534
SCRATCH = "/tmp"  # inside the sandbox: the only writable directory

# Runs inside the sandbox as `python -I -S -c BOOTSTRAP mem_bytes cpu_s fsize_bytes nproc`: limits
# first (an unprivileged process can only lower them), then the program as __main__. A program
# passes only if it runs to its end: the bootstrap then prints a one-time token it read from stdin
# before the program started, so an early `sys.exit(0)` / `os._exit(0)` / killed interpreter is a
# failure, as it is in human-eval (its "passed" is appended after `exec` returns).
BOOTSTRAP = r"""
def _run():
    import os, resource, sys
    token = os.read(0, 64)
    null = os.open("/dev/null", os.O_RDONLY); os.dup2(null, 0); os.close(null)
    mem, cpu, fsize, nproc = map(int, sys.argv[1:5])
    for lim, v in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, fsize),
                   (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, nproc)):
        resource.setrlimit(lim, (v, v))
    sys.argv = ["program.py"]
    with open("program.py", encoding="utf-8") as f:
        code = compile(f.read(), "program.py", "exec")
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    sys.stdout.flush(); sys.stderr.flush()
    os.write(1, b"\n" + token)
    os._exit(0)
_run()
"""


class SandboxUnavailable(ValueError):
    """No working isolation on this machine and the caller did not accept running unsandboxed (a
    ValueError: a setting this machine cannot honour, reported by the CLI in one line)."""


@dataclass(frozen=True)
class SandboxConfig:
    timeout_s: float = 10.0  # wall clock
    memory_mb: int = 1024  # address space per process; CPython needs ~30 MB of it
    max_procs: int = 16  # RLIMIT_NPROC (threads count too): bounds fork bombs and memory x processes
    max_file_mb: int = 16  # RLIMIT_FSIZE: any one file, stdout/stderr included
    scratch_mb: int = 64  # size of the /tmp tmpfs: all files together
    allow_unsafe: bool = False  # run without isolation where none works (the program can do what you can)

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.memory_mb < 64 or self.max_procs < 1 or self.max_file_mb < 1 \
                or self.scratch_mb < 1:
            raise ValueError(f"bad sandbox limits: {self}")


@dataclass
class ExecResult:
    passed: bool
    status: str  # passed | failed | timeout
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    sandbox: str = "bwrap"  # bwrap | none


# --- the bwrap command line --------------------------------------------------------------------

def _interpreter() -> tuple[str, list[str]]:
    """The base interpreter (not a venv's: the program gets the standard library only, as before;
    `-S` skips site-packages) and the directories it needs, as real paths."""
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    roots = {os.path.realpath(sys.base_prefix), os.path.dirname(exe)}
    return exe, sorted(r for r in roots if not any(r != o and r.startswith(o + os.sep) for o in roots))


def _parents(path: str) -> list[str]:
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def bwrap_argv(cfg: SandboxConfig, program_fd: int) -> list[str]:
    """bwrap + (as root) setpriv + python, for a program readable from `program_fd`."""
    exe, roots = _interpreter()
    argv = [shutil.which("bwrap") or "bwrap", "--die-with-parent", "--new-session", "--clearenv",
            "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    root = os.geteuid() == 0
    if not root:  # an unprivileged caller needs a user namespace; 65534 inside maps to the caller
        argv += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY)]
    argv += ["--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    argv += ["--perms", "0755", "--dir", "/etc", "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    made = {"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"}
    for r in roots:
        if r == "/usr" or r.startswith("/usr/"):
            continue
        for d in _parents(r):  # bwrap would make missing parents 0700, unreadable to uid 65534
            if d not in made:
                argv += ["--perms", "0755", "--dir", d]
                made.add(d)
        argv += ["--ro-bind", r, r]
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(cfg.scratch_mb << 20), "--tmpfs", SCRATCH,
             "--perms", "0444", "--file", str(program_fd), f"{SCRATCH}/program.py",
             "--chdir", SCRATCH, "--setenv", "HOME", SCRATCH, "--setenv", "TMPDIR", SCRATCH,
             "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8", "--"]
    if root:  # drop to 65534 with no capabilities left to undo the read-only binds
        argv += [shutil.which("setpriv") or "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                 "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    return argv + [exe, "-I", "-S", "-c", BOOTSTRAP, *_limits(cfg)]


def _limits(cfg: SandboxConfig) -> list[str]:
    return [str(cfg.memory_mb << 20), str(int(cfg.timeout_s) + 1), str(cfg.max_file_mb << 20), str(cfg.max_procs)]


@functools.cache
def sandbox_kind() -> str:
    """"bwrap" where a bubblewrap sandbox starts on this machine (tried once), else "none"."""
    if not shutil.which("bwrap") or (os.geteuid() == 0 and not shutil.which("setpriv")):
        return "none"
    try:
        r = _run("import os; print(os.getuid())", SandboxConfig(timeout_s=30), "bwrap")
    except OSError:
        return "none"
    return "bwrap" if r.passed and r.stdout.strip() == str(NOBODY) else "none"


def require_sandbox(allow_unsafe: bool = False) -> str:
    """The sandbox programs will run in; raises SandboxUnavailable where there is none and the
    caller has not accepted the risk."""
    kind = sandbox_kind()
    if kind == "none" and not allow_unsafe:
        raise SandboxUnavailable(
            "no code sandbox on this machine: bubblewrap (`bwrap`, Debian/Ubuntu package `bubblewrap`) is missing "
            "or cannot create namespaces here (see docs/sandbox.md). Install it, or pass --allow-unsafe-code to run "
            "model-written programs UNSANDBOXED: they could read, change or delete your files and use the network.")
    return kind


# --- running ------------------------------------------------------------------------------------

def _tail(path: str, n: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _run(code: str, cfg: SandboxConfig, kind: str) -> ExecResult:
    host = tempfile.mkdtemp(prefix="kollm-exec-")  # stdout/stderr (and, unsandboxed, the scratch dir)
    fd = os.memfd_create("program.py") if kind == "bwrap" else -1
    try:
        if kind == "bwrap":
            os.write(fd, code.encode("utf-8"))
            os.lseek(fd, 0, os.SEEK_SET)
            argv, cwd, fds = bwrap_argv(cfg, fd), "/", (fd,)
            env = {}
        else:
            with open(os.path.join(host, "program.py"), "w", encoding="utf-8") as f:
                f.write(code)
            argv, cwd, fds = [sys.executable, "-I", "-S", "-c", BOOTSTRAP, *_limits(cfg)], host, ()
            env = {"PATH": "/usr/bin:/bin", "HOME": host, "TMPDIR": host, "LANG": "C.UTF-8"}
        out_p, err_p = os.path.join(host, ".stdout"), os.path.join(host, ".stderr")
        token = secrets.token_hex(16).encode()
        t0 = time.perf_counter()
        with open(out_p, "wb") as out, open(err_p, "wb") as err:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                    pass_fds=fds, start_new_session=True)
            try:
                try:
                    proc.stdin.write(token)
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
                rc: int | None = proc.wait(timeout=cfg.timeout_s)
                status = "passed" if rc == 0 else "failed"
            except subprocess.TimeoutExpired:
                rc, status = None, "timeout"
            finally:
                # bwrap's own session (the program has another): killing bwrap kills its PID
                # namespace's init, and with it every process the program left behind
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        stdout = _tail(out_p)
        if status == "passed":  # exit status 0 and the token last: the program ran to its end
            if stdout.endswith("\n" + token.decode()):
                stdout = stdout[: -len(token) - 1]
            else:
                status = "failed"
        return ExecResult(status == "passed", status, rc, stdout, _tail(err_p),
                          round(time.perf_counter() - t0, 3), kind)
    finally:
        if fd >= 0:
            os.close(fd)
        shutil.rmtree(host, ignore_errors=True)


def run_program(code: str, cfg: SandboxConfig | None = None) -> ExecResult:
    """Run `code` as a Python program in the sandbox; passed = exit status 0 within the limits.
    Raises SandboxUnavailable where there is no sandbox and `cfg.allow_unsafe` is off."""
    cfg = cfg or SandboxConfig()
    return _run(code, cfg, require_sandbox(cfg.allow_unsafe))


def run_many(programs: Sequence[str], cfg: SandboxConfig | None = None, workers: int = 2) -> list[ExecResult]:
    """Run programs concurrently (each in its own sandbox), results in input order."""
    cfg = cfg or SandboxConfig()
    require_sandbox(cfg.allow_unsafe)  # refuse before starting any
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda c: run_program(c, cfg), programs))


def unsafe(cfg: SandboxConfig) -> SandboxConfig:
    """`cfg` with the opt-in to run unsandboxed where no sandbox works."""
    return dataclasses.replace(cfg, allow_unsafe=True)


# --- HumanEval / MBPP programs, as human-eval's check_correctness and lm-eval's code_eval build them --
#
# One change to the reference harnesses (which share the weakness): the tests compare what the
# model's function returns only as a plain value. A function that returns an object whose __eq__
# always answers True used to pass every `assert f(x) == y`; now its result must be of an exact
# built-in type (int, float, complex, str, bytes, bool, None, or a list / tuple / dict / set /
# frozenset of such, rebuilt element by element; a builtin iterator such as a generator or `map`
# passes through), else the call raises TypeError and the test fails. The prelude that does it
# runs before the model's code, so it holds the real built-ins. What a hostile program can still
# do inside its own interpreter is in docs/sandbox.md.

PLAIN = "__kollm_plain"
PRELUDE = f"""
def __kollm_plain_factory():
    _type, _err, _list, _tuple, _dict, _set, _fs = type, TypeError, list, tuple, dict, set, frozenset
    _atoms = (int, float, complex, str, bytes, bool, type(None))
    _iters = (type((lambda: (yield))()), map, filter, zip, range, enumerate, reversed, type(iter([])),
              type(reversed([])), type(iter(())), type(iter("")))

    def plain(x):
        t = _type(x)
        if t in _atoms or t in _iters:
            return x
        if t is _list:
            return [plain(v) for v in x]
        if t is _tuple:
            return _tuple([plain(v) for v in x])
        if t is _dict:
            return {{plain(k): plain(v) for k, v in _dict.items(x)}}
        if t is _set or t is _fs:
            return t([plain(v) for v in x])
        raise _err(f"the function returned a {{t.__name__}}, not a plain value (kollm compares plain values only)")

    def wrap(fn):
        def call(*args, **kwargs):
            return plain(fn(*args, **kwargs))
        return call

    return plain, wrap


{PLAIN}, {PLAIN}_fn = __kollm_plain_factory()
del __kollm_plain_factory
"""


def _prelude(code: str) -> str:
    """PRELUDE first, after any `from __future__` lines (which must open the file)."""
    lines = code.splitlines(keepends=True)
    n = 0
    while n < len(lines) and (not lines[n].strip() or lines[n].lstrip().startswith(("#", "from __future__"))):
        n += 1
    return "".join(lines[:n]) + PRELUDE + "".join(lines[n:])


def humaneval_program(row: dict, completion: str) -> str:
    """lm-eval's humaneval: candidate = prompt + completion; reference = `test` + check(entry_point);
    code_eval runs candidate + "\n" + reference. `check` gets the function wrapped so that what it
    returns is compared as a plain value."""
    return humaneval_check(row, row["prompt"] + completion)


def humaneval_check(row: dict, candidate: str) -> str:
    """The program that runs `row`'s tests on `candidate` (code defining the entry point)."""
    return _prelude(candidate + "\n" + row["test"] + "\n" + f"check({PLAIN}_fn({row['entry_point']}))")


class _PlainCalls(ast.NodeTransformer):
    """In an assert, each call of a function that is not a built-in returns a plain value."""

    def visit_Call(self, node: ast.Call) -> ast.AST:  # noqa: N802 (ast's name)
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and not hasattr(builtins, node.func.id):
            return ast.Call(ast.Name(PLAIN, ast.Load()), [node], [])
        return node


def plain_asserts(test: str) -> str:
    """MBPP's asserts call the model's function directly: wrap those calls (a test line that does
    not parse is left as it is, to fail as it would have)."""
    try:
        tree = ast.parse(test)
    except SyntaxError:
        return test
    for i, stmt in enumerate(tree.body):
        if isinstance(stmt, ast.Assert):
            tree.body[i] = ast.fix_missing_locations(_PlainCalls().visit(stmt))
    return ast.unparse(tree)


def mbpp_program(row: dict, code: str) -> str:
    """lm-eval's mbpp: the generated code + "\n" + the `test_list` asserts, one per line
    (`test_setup_code`, empty in nearly all rows and ignored by lm-eval, goes first when present);
    the asserts compare what the model's function returns as plain values."""
    setup = row.get("test_setup_code") or ""
    return _prelude((setup + "\n" if setup else "") + code + "\n"
                    + "\n".join(plain_asserts(t) for t in row["test_list"]))
