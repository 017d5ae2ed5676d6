"""Rollouts for GRPO: G sampled completions per prompt, from the current policy in process (kollm's
batched KV-cache generation, kollm.model.generate) or from an OpenAI-compatible server by URL
(vLLM, SGLang, `kollm serve`) for scale.

Both take prompts as token ids and return completion token ids, so the trainer scores exactly
the tokens that were sampled. The in-process engine repeats each prompt G times in one batch and
draws every sample with one seeded generator (the seed comes from the data source's RNG, whose
state is checkpointed: a resumed run samples the same completions). The server engine sends one
`/v1/completions` request per prompt with `n = G` and the prompt as token ids; it asks vLLM for the
sampled ids (`return_token_ids`) and re-tokenises the text where a server does not return them.
A server generates with whatever weights it holds: keeping them in step with the policy (vLLM's
weight-update endpoints, or reloading `OUTPUT_DIR/hf/latest`) is the deployment's job; the
clipped ratio is taken against the trainer's own log-probs of the sampled tokens either way.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import torch

from kollm.model.generate import GenerationConfig, generate


class LocalRollout:
    """G samples per prompt from `model` (the unwrapped policy the trainer updates)."""

    def __init__(self, model, cfg: GenerationConfig):
        self.model, self.cfg = model, cfg

    def sample(self, prompts: Sequence[Sequence[int]], n: int, seed: int | None) -> list[list[list[int]]]:
        flat = [list(p) for p in prompts for _ in range(n)]
        outs = generate(self.model, flat, replace(self.cfg, seed=seed))
        return [outs[i * n:(i + 1) * n] for i in range(len(prompts))]


class ServerRollout:
    """G samples per prompt from an OpenAI-compatible `/v1/completions` endpoint."""

    def __init__(self, base_url: str, tokenizer, cfg: GenerationConfig, model: str = "default",
                 api_key: str | None = None, timeout: float = 600.0, concurrency: int = 8):
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.tokenizer, self.cfg, self.model_name = tokenizer, cfg, model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.timeout, self.concurrency = timeout, concurrency

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.api_key}"}
                                                           if self.api_key else {})}
        req = urllib.request.Request(self.base_url + "/completions", data=json.dumps(body).encode(), method="POST",
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise ValueError(f"{self.base_url}/completions: HTTP {e.code}: {e.read()[:300]!r}") from None
        except urllib.error.URLError as e:
            raise ValueError(f"{self.base_url}/completions: cannot reach the rollout server ({e.reason})") from None

    def _one(self, args: tuple[list[int], int, int | None]) -> list[list[int]]:
        prompt, n, seed = args
        c = self.cfg
        body = {"model": self.model_name, "prompt": prompt, "n": n, "max_tokens": c.max_new_tokens,
                "temperature": c.temperature if c.do_sample else 0.0, "top_p": c.top_p,
                "return_token_ids": True}  # vLLM: the sampled ids, no re-tokenisation
        if c.top_k:
            body["top_k"] = c.top_k  # vLLM / SGLang extension
        if seed is not None:
            body["seed"] = seed
        if c.stop_token_ids:
            body["stop_token_ids"] = list(c.stop_token_ids)  # vLLM extension
        choices = sorted(self._post(body)["choices"], key=lambda ch: ch.get("index", 0))
        if len(choices) != n:
            raise ValueError(f"{self.base_url}/completions: asked for n={n} samples, got {len(choices)}")
        out = []
        for ch in choices:
            ids = ch.get("token_ids")
            if ids is None:
                ids = self.tokenizer(ch.get("text") or "", add_special_tokens=False)["input_ids"]
            ids = list(ids)
            # A server leaves the stop token out of the text; the policy must learn to emit it.
            if ch.get("finish_reason") == "stop" and c.stop_token_ids and (not ids or ids[-1] not in c.stop_token_ids):
                ids.append(c.stop_token_ids[0])
            out.append(ids[:c.max_new_tokens])
        return out

    def sample(self, prompts: Sequence[Sequence[int]], n: int, seed: int | None) -> list[list[list[int]]]:
        # one seed per prompt, derived from the step's seed: a server run is reproducible where the
        # server honours seeds
        args = [(list(p), n, None if seed is None else (seed + i) % 2**31) for i, p in enumerate(prompts)]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._one, args))


def pad_rollouts(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int = 0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt + completion per row, right-padded: (input_ids, completion_mask), both (N, T).
    Right padding keeps a plain causal forward exact for every real token (pads come last)."""
    T = max(len(p) + len(c) for p, c in zip(prompts, completions))
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, :len(p) + len(c)] = torch.tensor(list(p) + list(c), dtype=torch.long)
        mask[i, len(p):len(p) + len(c)] = 1
    return ids, mask


__all__ = ["LocalRollout", "ServerRollout", "pad_rollouts"]
