"""The one client for OpenAI-compatible `/v1/chat/completions` servers (vLLM, SGLang, `kollm serve`,
a hosted API), for every layer that asks one: the curation and SFT judges (`data/judge.py`), the
preference-pair judge (`data/pairs.py`) and the chat benchmarks (`eval/judge.py`).

Standard library only, so judging needs no SDK. A request is retried with exponential backoff and
jitter on 429, 5xx and network errors (honouring `Retry-After`); any other HTTP error fails at once.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass


@dataclass
class ClientConfig:
    endpoint: str  # base URL, e.g. http://localhost:8000/v1 ; /chat/completions is appended
    model: str
    api_key: str | None = None
    concurrency: int = 8  # the callers' limit on requests in flight
    max_retries: int = 6
    backoff_s: float = 1.0  # first retry waits ~1 s, then 2, 4, ... (capped at 60 s, with jitter)
    timeout_s: float = 120.0
    temperature: float = 0.0
    max_tokens: int = 512


class ChatClient:
    """Minimal OpenAI chat-completions client (stdlib only, so judging needs no SDK)."""

    def __init__(self, cfg: ClientConfig):
        self.cfg = cfg
        self.url = cfg.endpoint.rstrip("/") + ("" if cfg.endpoint.rstrip("/").endswith("/chat/completions")
                                               else "/chat/completions")

    def complete(self, messages: list[dict], attempt: int = 0) -> str:
        """One chat completion, retried on transport errors and 5xx. `attempt` is the caller's count
        of asks for the same judgment (kollm.judging.judge_turn re-asks unparsable ones); it matters to
        caching wrappers, not to the request."""
        c = self.cfg
        body = json.dumps({"model": c.model, "messages": messages, "temperature": c.temperature,
                           "max_tokens": c.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if c.api_key:
            headers["Authorization"] = f"Bearer {c.api_key}"
        for attempt in range(c.max_retries + 1):
            wait = min(60.0, c.backoff_s * 2**attempt) * (0.5 + random.random() / 2)
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=c.timeout_s) as resp:
                    data = json.loads(resp.read().decode("utf-8"))
                return data["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                if e.code != 429 and e.code < 500:
                    raise RuntimeError(f"judge endpoint {self.url} answered HTTP {e.code}: {e.read()[:200]!r}") from e
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = float(retry_after)
                err: Exception = e
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError, KeyError,
                    IndexError) as e:
                err = e
            if attempt < c.max_retries:
                time.sleep(wait)
        raise RuntimeError(f"judge endpoint {self.url} failed after {c.max_retries + 1} tries: {err}")


def api_key_from_env(name: str | None) -> str | None:
    return os.environ.get(name) if name else None
