"""Rollouts for GRPO: G sampled completions per prompt, from the current policy in process (kollm's
batched KV-cache generation, kollm.model.generate) or from an OpenAI-compatible server by URL
(vLLM, SGLang, `kollm serve`) for scale.

Both take prompts as token ids and return completion token ids, so the trainer scores exactly
the tokens that were sampled. The in-process engine repeats each prompt G times in one batch and
draws every sample with one seeded generator (the seed comes from the data source's RNG, whose
state is checkpointed: a resumed run samples the same completions). The server engine sends one
`/v1/completions` request per prompt with `n = G` and the prompt as token ids; it asks vLLM for the
sampled ids (`return_token_ids`) and re-tokenises the text where a server does not return them.

A server generates with whatever weights it holds, so `WeightSync` keeps them equal to the policy
(`grpo.sync_weights`, on by default), as TRL does for its vLLM server: before a rollout batch (or a
validation pass) whose policy changed since the last sync (an optimizer step marks it stale; a
run, resumed or not, starts stale) rank 0 writes the policy as a Hugging Face directory, `OUTPUT_DIR/rollout-weights`
(kollm.model.hf.save_hf; under FSDP the full state dict is gathered from all ranks first),
replaced atomically each time, and posts its path to SGLang's `POST /update_weights_from_disk`
(`kollm serve --allow-weight-updates --weights-root R`, R = OUTPUT_DIR or a parent, and SGLang
serve it; the server must see OUTPUT_DIR: the same machine or a shared filesystem). All ranks wait for the answer before sampling; a refusal
stops the run with the server's message. With `sync_weights: false` (e.g. vLLM, which has no such
route) keeping the server in step is the deployment's job. The clipped ratio is taken against
the trainer's own log-probs of the sampled tokens either way.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import torch

from kollm.model.generate import GenerationConfig, generate
from kollm.model.hf import save_hf
from kollm.model.transformer import build_model


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
        self.root = self.base_url.removesuffix("/v1")  # the server's own routes (weight updates)
        self.tokenizer, self.cfg, self.model_name = tokenizer, cfg, model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.timeout, self.concurrency = timeout, concurrency

    def _headers(self) -> dict:
        return {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.api_key}"}
                                                       if self.api_key else {})}

    def update_weights(self, path: str | os.PathLike) -> str:
        """SGLang's `POST /update_weights_from_disk {"model_path": path}`; the server's message, or a
        ValueError naming the URL and the server's answer."""
        url = self.root + "/update_weights_from_disk"
        req = urllib.request.Request(url, data=json.dumps({"model_path": str(path)}).encode(), method="POST",
                                     headers=self._headers())
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                answer = resp.read()
        except urllib.error.HTTPError as e:
            raise ValueError(f"weight sync: {url} answered HTTP {e.code}: {e.read()[:500].decode(errors='replace')}"
                             + (" (start `kollm serve` with --allow-weight-updates --weights-root OUTPUT_DIR, or set grpo.sync_weights: false "
                                "if the server is kept in step otherwise)" if e.code == 404 else "")) from None
        except urllib.error.URLError as e:
            raise ValueError(f"weight sync: cannot reach {url} ({e.reason})") from None
        try:
            body = json.loads(answer)
        except json.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or body.get("success") is not True:
            raise ValueError(f"weight sync: {url} did not confirm the update: {answer[:500].decode(errors='replace')}")
        return str(body.get("message", ""))

    def _post(self, body: dict) -> dict:
        headers = self._headers()
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


class WeightSync:
    """Writes the policy to `out_dir` (one fixed Hugging Face directory, replaced atomically) and
    has the rollout server load it; `__call__` on every rank at once, returns the seconds it took
    (0 when the policy has not changed since the last sync: `mark_stale` after every optimizer
    step). `gather`: the policy is FSDP-sharded, every rank takes part in gathering the full state
    dict."""

    def __init__(self, engine: ServerRollout, policy, out_dir: str | os.PathLike, dtype: torch.dtype,
                 tokenizer: str | os.PathLike | None, rank: int = 0, gather: bool = False):
        from pathlib import Path

        self.engine, self.policy, self.out = engine, policy, Path(out_dir)
        self.dtype, self.tokenizer, self.rank, self.gather = dtype, tokenizer, rank, gather
        self.stale = True  # the server's weights are not known to be the policy's

    def mark_stale(self, *_) -> None:
        """The policy changed (an optimizer step post-hook: `optimizer.register_step_post_hook`)."""
        self.stale = True

    def __call__(self, path: str | os.PathLike | None = None) -> float:
        """Sync the current policy; with `path`, have the server load that export instead (the
        run's final `hf/step-N`, already on disk: rank 0 only posts)."""
        if not self.stale:  # the same on every rank: they step together
            return 0.0
        t0 = time.perf_counter()
        error = None
        try:
            if path is None:
                model = self._full_policy()
                if self.rank == 0:
                    path = self._write(model)
            if self.rank == 0:  # absolute: the server resolves a relative path against its own directory
                self.engine.update_weights(os.path.abspath(path))
        except Exception as e:  # on rank 0 alone: the others must hear of it, not wait forever
            error = str(e) if isinstance(e, OSError | ValueError) else f"weight sync failed: {type(e).__name__}: {e}"
        error = _from_rank0(error)  # also the barrier: no rank samples before the server has the weights
        if error is not None:
            raise ValueError(error)
        self.stale = False
        return time.perf_counter() - t0

    def _full_policy(self):
        if not self.gather:
            return self.policy
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # collective: every rank sends its shards, rank 0 receives the whole state dict on the CPU
        sd = get_model_state_dict(self.policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.rank != 0:
            return None
        model = build_model(self.policy.config, device="meta")
        model.load_state_dict(sd, assign=True)
        model.tie_weights()
        return model

    def _write(self, model):
        new, old = self.out.with_name(f".{self.out.name}.new"), self.out.with_name(f".{self.out.name}.old")
        for leftover in (new, old):  # a run killed during an earlier sync
            shutil.rmtree(leftover, ignore_errors=True)
        save_hf(model, new, tokenizer=self.tokenizer, dtype=self.dtype)  # complete or absent
        if self.out.exists():
            os.replace(self.out, old)
        os.replace(new, self.out)
        shutil.rmtree(old, ignore_errors=True)
        return self.out.resolve()


def _from_rank0(obj):
    """`obj` as rank 0 has it, on every rank (a barrier too); itself without torch.distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


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


__all__ = ["LocalRollout", "ServerRollout", "WeightSync", "pad_rollouts"]
