"""Hostile programs against the code sandbox: each attack below (the escapes found in the old
audit-hook sandbox, and the classic ones) must be contained -- the program fails, this process
(the evaluator) lives, no file outside the sandbox's scratch dir is touched, nothing reaches the
test's sockets, no process outlives the run, and pass@1 counts none of them.

Every attack program exits 0 only if its attack worked, so `passed` is the breach signal; the
effects are also checked from outside."""

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from kollm.eval import code_exec
from kollm.eval.code_exec import SandboxConfig, SandboxUnavailable, humaneval_program, run_many, run_program
from kollm.eval.task import get_task

pytestmark = pytest.mark.skipif(code_exec.sandbox_kind() != "bwrap",
                                reason="no working bubblewrap here (scripts/setup.sh installs it as root)")

CFG = SandboxConfig(timeout_s=3, memory_mb=256, max_procs=16, scratch_mb=16)
SECRET = "kollm-secret-7f3a9c"
ADD = {"task_id": "HumanEval/53", "prompt": "def add(x: int, y: int):\n    \"\"\"Add two numbers x and y\"\"\"\n",
       "canonical_solution": "    return x + y\n",
       "test": "\n\ndef check(candidate):\n    assert candidate(0, 1) == 1\n    assert candidate(5, 7) == 12\n",
       "entry_point": "add"}


def _snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_mode, p.stat().st_size, p.stat().st_mtime_ns,
                     p.read_bytes() if p.is_file() else None) for p in [root, *root.rglob("*")]}


def _procs_with(marker: str) -> list[int]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(int(pid))
        except OSError:
            pass
    return out


def _listen_tcp():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    return s


def _accept_all(server, hits, done):
    server.settimeout(0.2)
    while not done.is_set():
        try:
            hits.append(server.accept()[0])
        except TimeoutError:
            continue
        except OSError:
            return


def test_hostile_programs_are_contained(tmp_path, monkeypatch):
    monkeypatch.setenv("KOLLM_TEST_TOKEN", SECRET)  # in the evaluator's /proc/<pid>/environ
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    (tmp_path / "secret.txt").write_text(SECRET)
    victim = tmp_path / "victim.txt"
    tcp = _listen_tcp()
    port = tcp.getsockname()[1]
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "s.sock"))
    unix.listen(4)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(f"\0kollm-test-{os.getpid()}")
    abstract.listen(4)
    hits: list = []
    done = threading.Event()
    for s in (tcp, unix, abstract):
        threading.Thread(target=_accept_all, args=(s, hits, done), daemon=True).start()
    # a process of the sandbox's uid outside it: `kill -9 -1` from a sandbox without its own PID
    # namespace would reach it
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    bystander = subprocess.Popen([*drop, "sleep", "57.31"])
    before = _snapshot(tmp_path)
    T, V, K = str(tmp_path), str(victim), str(keep)
    hostile = {
        # the old sandbox's escape: clear the bootstrap's deny lists through __main__, then a shell
        "main_then_shell": (
            "import __main__, subprocess\n"
            "for k in ('_DENY', '_PATHS', '_NO_IMPORT'):\n    getattr(__main__, k, set()).clear()\n"
            f"subprocess.run(['sh', '-c', 'id -u; echo pwned > {V}; rm -f {K}'])\n"
            f"import os; assert os.path.exists({V!r})"),
        "dir_fd_create_unlink": (
            f"import os\nd = os.open({T!r}, os.O_RDONLY)\n"
            "os.close(os.open('victim.txt', os.O_WRONLY | os.O_CREAT, dir_fd=d))\nos.unlink('keep.txt', dir_fd=d)"),
        "dir_fd_readonly_root": (
            "import os\nd = os.open('/usr', os.O_RDONLY)\nos.close(os.open('pwned', os.O_WRONLY | os.O_CREAT, dir_fd=d))"),
        "mknod_device": "import os, stat\nos.mknod('/tmp/mem', stat.S_IFCHR | 0o600, os.makedev(1, 1))",
        "mknod_outside": f"import os\nos.mknod({V!r})",
        "evaluator_environ": (
            f"import os\nenv = open('/proc/{os.getpid()}/environ', 'rb').read()\nassert b{SECRET!r} in env"),
        "any_environ": (
            "import glob\nfound = []\nfor p in glob.glob('/proc/*/environ'):\n    try:\n"
            f"        found.append(b{SECRET!r} in open(p, 'rb').read())\n    except OSError:\n        pass\n"
            "assert any(found)"),
        "read_secret_file": f"print(open({str(tmp_path / 'secret.txt')!r}).read())",
        "read_via_proc_root": f"print(open('/proc/1/root{tmp_path}/secret.txt').read())",
        "write_outside": f"open({V!r}, 'w').write('pwned')",
        "tcp_socket": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'x')",
        "unix_socket": f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({str(tmp_path / 's.sock')!r})",
        "abstract_socket": (f"import socket\ns = socket.socket(socket.AF_UNIX)\n"
                            f"s.connect('\\0kollm-test-{os.getpid()}')"),
        "fork_bomb": "import os\nwhile True:\n    os.fork()",
        "memory_bomb": "x = bytearray(8 * 2**30)",
        "memory_creep": "x = []\nwhile True:\n    x.append(bytearray(2**24))",
        "forked_memory": ("import os\nfor _ in range(64):\n    if os.fork() == 0:\n"
                          "        x = bytearray(200 * 2**20)\n        import time; time.sleep(5)\nimport time; time.sleep(5)"),
        "cpu_loop": "while True:\n    pass",
        "kill_parent": "import os, signal, time\nos.kill(os.getppid(), signal.SIGKILL)\ntime.sleep(0.5)",
        "kill_everything": "import os, signal, time\nos.kill(-1, signal.SIGKILL)\ntime.sleep(0.5)",
        "disk_fill_files": ("i = 0\nwhile True:\n    open(f'/tmp/f{i}', 'wb').write(b'x' * 2**20)\n    i += 1"),
        "disk_fill_one_file": "f = open('big', 'wb')\nwhile True:\n    f.write(b'x' * 2**20)",
        "disk_fill_cwd_of_host": "open('/big', 'wb').write(b'x' * 2**20)",
        "scratch_size": ("import os\nst = os.statvfs('/tmp')\nprint(st.f_blocks * st.f_frsize)\n"
                         "raise SystemExit(3)  # reports only"),
        # a child that setsid()s away and outlives its parent, while the parent exits or loops
        "orphan_after_exit": ("import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                              "        os.execv('/bin/sleep', ['sleep', '61.2345'])\n    os._exit(0)\nos.wait()\n"
                              "raise SystemExit(3)  # the breach is the orphan, checked from outside"),
        "orphan_after_timeout": ("import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                                 "        os.execv('/bin/sleep', ['sleep', '62.3456'])\n    os._exit(0)\n"
                                 "while True:\n    pass"),
        "exit_early": "import sys\nsys.exit(0)",
        "os_exit_early": "import os\nos._exit(0)",
        "remount_rw": "import subprocess\nsubprocess.run(['mount', '-o', 'remount,rw', '/usr'], check=True)",
        "setuid_root": "import os\nos.setuid(0)",
    }
    t0 = time.perf_counter()
    res = dict(zip(hostile, run_many(list(hostile.values()), CFG, workers=2)))
    wall = time.perf_counter() - t0
    bystander_alive = bystander.poll() is None
    bystander.kill()
    bystander.wait()
    done.set()
    time.sleep(0.3)
    for s in (tcp, unix, abstract):
        s.close()

    breached = [name for name, r in res.items() if r.passed]
    assert breached == [], {n: (res[n].stdout, res[n].stderr) for n in breached}
    assert _snapshot(tmp_path) == before  # nothing outside scratch was created, changed or deleted
    assert hits == []  # no connection reached the evaluator's sockets
    assert bystander_alive  # kill -9 -1 did not reach a process outside the sandbox
    assert _procs_with("61.2345") == [] and _procs_with("62.3456") == []  # no orphan outlived its run
    assert res["main_then_shell"].stdout.split()[0] == "65534"  # the shell ran, unprivileged, contained
    assert all(SECRET not in r.stdout + r.stderr for r in res.values())
    for name in ("cpu_loop", "orphan_after_timeout"):
        assert res[name].status == "timeout" and res[name].seconds < CFG.timeout_s + 2, res[name]
    assert "MemoryError" in res["memory_bomb"].stderr and "MemoryError" in res["memory_creep"].stderr
    assert "No space left" in res["disk_fill_files"].stderr  # the scratch tmpfs is full, not the disk
    assert res["disk_fill_one_file"].returncode not in (0, None)  # SIGXFSZ or EFBIG at the file limit
    assert "Read-only file system" in res["dir_fd_readonly_root"].stderr
    assert "Operation not permitted" in res["mknod_device"].stderr
    # what filled up was the sandbox's own RAM-backed scratch, of the configured size, not a disk
    assert int(res["scratch_size"].stdout.split()[0]) == CFG.scratch_mb << 20
    assert wall < 30, wall


def test_escapes_do_not_inflate_pass_at_1(tmp_path):
    """Completions that stop the program before `check` runs, or attack the process around them,
    score 0 through the humaneval task's own scoring; the right answer scores 1."""
    task = get_task("humaneval")
    bodies = ["    return x + y\n",
              "    return x - y\nimport sys\nsys.exit(0)\n",
              "    return x - y\nimport os\nos._exit(0)\n",
              "    return x - y\nraise SystemExit\n",
              "    return x - y\nimport os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
              "    return x - y\nimport os, signal\nos.kill(-1, signal.SIGKILL)\n",
              "    return x - y\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
              "    return x - y\nprint('\\n' + '0' * 32)\nimport os\nos._exit(0)\n"]  # a guessed token
    assert task.score_batch([ADD] * len(bodies), bodies) == [1.0] + [0.0] * (len(bodies) - 1)
    assert task.run_info == {"sandbox": "bwrap"}


def test_no_sandbox_refuses_unless_opted_in(monkeypatch, tmp_path):
    monkeypatch.setattr(code_exec, "sandbox_kind", lambda: "none")
    with pytest.raises(SandboxUnavailable, match="--allow-unsafe-code"):
        run_program("print(1)", CFG)
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        get_task("humaneval")
    r = run_program(humaneval_program(ADD, ADD["canonical_solution"]), code_exec.unsafe(CFG))
    assert r.passed and r.sandbox == "none"
    task = get_task("humaneval", allow_unsafe_code=True)
    assert task.run_info == {"sandbox": "none"}
    assert task.score_batch([ADD], ["    return x + y\n"]) == [1.0]


def test_cli_refuses_then_records_unsandboxed_runs(monkeypatch, tmp_path, capsys):
    import json

    import kollm.eval.models
    from kollm.cli import main

    class Canonical:  # answers every prompt with ADD's solution
        name = "canonical"

        def generate(self, reqs):
            return [ADD["canonical_solution"] for _ in reqs]

    monkeypatch.setattr(kollm.eval.models, "load_model", lambda *a, **k: Canonical())
    (tmp_path / "openai_humaneval").mkdir()
    (tmp_path / "openai_humaneval" / "test.jsonl").write_text(json.dumps(ADD) + "\n")
    argv = ["eval", "--model", str(tmp_path), "--tasks", "humaneval", "--data-dir", str(tmp_path), "--device", "cpu",
            "--out", str(tmp_path / "run")]
    results = lambda: json.loads((tmp_path / "run" / "results.json").read_text())["results"]["humaneval"]  # noqa: E731
    assert main(argv) == 0  # bwrap here: runs sandboxed, and says so
    assert results()["sandbox"] == "bwrap" and results()["metrics"]["pass@1"]["value"] == 1.0
    monkeypatch.setattr(code_exec, "sandbox_kind", lambda: "none")
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allow-unsafe-code" in err
    assert main([*argv, "--allow-unsafe-code"]) == 0
    assert results()["sandbox"] == "none" and results()["metrics"]["pass@1"]["value"] == 1.0


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").is_file(), reason="needs root to become 65534")
def test_unprivileged_caller_gets_the_same_sandbox(tmp_path):
    """Run as a normal user, bwrap needs a user namespace (65534 inside maps to the caller): the
    same containment, checked with the system Python as uid 65534."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="kollm-userns-"))
    try:
        os.chmod(d, 0o755)
        shutil.copy(code_exec.__file__, d / "code_exec.py")
        secret = d / "secret.txt"
        secret.write_text(SECRET)
        (d / "check.py").write_text(
            "import json, sys\nsys.path.insert(0, sys.argv[1])\nimport code_exec as ce\n"
            "secret, pwned = sys.argv[2], sys.argv[3]\ncfg = ce.SandboxConfig(timeout_s=5)\n"
            "res = {'kind': ce.sandbox_kind(),\n"
            "       'uid': ce.run_program('import os; print(os.getuid(), os.getppid())', cfg).stdout.split(),\n"
            "       'read': ce.run_program(f'print(open({secret!r}).read())', cfg).passed,\n"
            "       'write': ce.run_program(f'open({pwned!r}, \"w\")', cfg).passed}\n"
            "print(json.dumps(res))\n")
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                            str(d / "check.py"), str(d), str(secret), str(d / "pwned")], capture_output=True,
                           text=True, timeout=120, cwd=d)
        res = __import__("json").loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None
        if res is None or res["kind"] != "bwrap":
            pytest.skip(f"no unprivileged user namespaces here: {r.stderr[-1500:]}")
        assert res == {"kind": "bwrap", "uid": ["65534", "1"], "read": False, "write": False}
        assert not (d / "pwned").exists()
    finally:
        shutil.rmtree(d, ignore_errors=True)
