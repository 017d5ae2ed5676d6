"""`running_server(model_dir)`: a real `kollm serve` process on 127.0.0.1 and a free port, for tests.

    with running_server(model_dir, "--max-batch", "16") as server:
        OpenAI(base_url=server.base_url, api_key=server.api_key or "x")   # base_url ends in /v1
        ClientConfig(endpoint=server.base_url, model=server.model)   # kollm.openai_client

The process is started with this interpreter (`python -m kollm.cli serve ... --port 0`), its
output is drained by a thread (the last lines go into the error if it dies), the context manager
returns once `/health` answers, and the process is terminated (then killed) on exit.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT
    base_url: str  # url + "/v1": what OpenAI clients take
    model: str  # the served model id
    api_key: str | None
    process: subprocess.Popen
    log: collections.deque  # the server's recent output lines

    def health(self) -> dict:
        import json

        with urllib.request.urlopen(self.url + "/health", timeout=10) as r:
            return json.loads(r.read())


@contextlib.contextmanager
def running_server(model_dir: str | os.PathLike, *args: str, api_key: str | None = None,
                   model_name: str = "kollm-test", timeout: float = 180.0) -> Iterator[Server]:
    cmd = [sys.executable, "-m", "kollm.cli", "serve", "--model", str(model_dir), "--host", "127.0.0.1",
           "--port", "0", "--served-model-name", model_name, "--log-level", "warning", *args]
    if api_key:
        cmd += ["--api-key", api_key]
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # the kollm this process imported, also in the child
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")  # tests share few cores: one model thread, one BLAS thread
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                            encoding="utf-8", errors="replace")
    log: collections.deque = collections.deque(maxlen=200)
    found = threading.Event()
    url: list[str] = []

    def drain() -> None:
        for line in proc.stdout:
            log.append(line.rstrip("\n"))
            m = re.search(r"kollm serve: listening on (http://\S+)", line)
            if m and not url:
                url.append(m.group(1))
                found.set()
        found.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        deadline = time.monotonic() + timeout
        found.wait(timeout)
        if not url:
            raise RuntimeError("kollm serve did not start:\n" + "\n".join(log))
        server = Server(url[0], url[0] + "/v1", model_name, api_key, proc, log)
        while True:
            try:
                server.health()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("kollm serve did not answer /health:\n" + "\n".join(log)) from None
                time.sleep(0.05)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
