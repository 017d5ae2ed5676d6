"""Model back-ends for the evaluation harness: a local checkpoint (kollm `CausalLM`) and any
OpenAI-compatible endpoint.

Follows lm-evaluation-harness's HF back-end for what a number means, so the two agree on the
same model and rows: a (context, continuation) pair is tokenized as lm-eval does (trailing
whitespace of the context moves to the continuation; the context is encoded alone, the whole
string is encoded, and the continuation is the whole's tokens after the context's), no BOS is
added unless asked, and an empty context is prefixed with BOS (else EOS).

Where kollm differs is speed: requests are run as prefix trees, so a token sequence shared by
several requests runs once — an item's context under all its choices, few-shot examples shared
by several items, choices that start alike. A row holds one tree in depth-first order, with a mask
that lets each token see its path from the root and RoPE positions equal to its depth. (`mode="rows"`
runs the lm-eval way, one row per request, for comparison.)
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import torch

from kollm.eval.task import Failed, Request


def split_pair(context: str, continuation: str) -> tuple[str, str]:
    """lm-eval's convention: trailing whitespace of the context belongs to the continuation."""
    n = len(context) - len(context.rstrip())
    if n:
        return context[:-n], context[-n:] + continuation
    return context, continuation


def progress_bar(total: int, desc: str):
    """A bar on stderr for minutes of work (a real model on a CPU prints nothing for half an hour
    otherwise); redrawn every 30 s when stderr is a log file, as the trainer's is."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="req", file=sys.stderr, dynamic_ncols=True,
                mininterval=0.1 if sys.stderr.isatty() else 30.0)


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cuts = [text.find(s) for s in stop if s and s in text]
    return text[: min(cuts)] if cuts else text


class LocalLM:
    """A checkpoint directory (Hugging Face layout, as `kollm export` writes it) on one device."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", dtype: torch.dtype | None = None,
                 batch_tokens: int | None = None, max_length: int | None = None, add_bos: bool = False,
                 mode: Literal["packed", "rows"] = "packed", model=None, tokenizer=None,
                 compile: bool | None = None, gen_rows: int | None = None):
        from kollm.data.chat import load_tokenizer
        from kollm.model.hf import load_hf, require_tokenizer

        self.path = Path(path)
        if tokenizer is None:
            require_tokenizer(self.path)
        self.model = model if model is not None else load_hf(self.path, device=device, dtype=dtype)
        # kollm's default chat template where the model has none, as `kollm generate`, `kollm serve` and
        # `kollm sft` use: a chat=true request gets the same prompt from all of them
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(self.path)
        self.device = next(self.model.parameters()).device
        self.max_length = max_length or self.model.config.max_seq_len
        # Tokens per forward (padded). CPU matmuls run fastest on small, cache-sized batches
        # (measured: 512 → 1.5 s, 8192 → 2.7 s on the same requests); GPUs want big ones.
        self.batch_tokens = batch_tokens or (16384 if self.device.type == "cuda" else 512)
        self.add_bos = add_bos
        if mode not in ("packed", "rows"):
            raise ValueError(f"mode must be packed or rows, got {mode!r}")
        self.mode = mode
        self.compile = compile  # generation's decode step (kollm.model.generate): None = on for CUDA
        # Rows decoded together by generation: CPU decode steps cost ~ rows x weights (compute
        # bound), so more rows buy little there; a GPU reads the weights once for all of them.
        self.gen_rows = gen_rows or (64 if self.device.type == "cuda" else 16)
        self.system_prompt: str | None = None  # chat requests: a system turn first (`kollm eval --system-prompt`)
        tok = self.tokenizer
        self.prefix_id = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        self.name = str(self.path)

    # --- tokenization -------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ([self.tokenizer.bos_token_id] + ids) if self.add_bos and self.tokenizer.bos_token_id is not None \
            else ids

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if not context:
            return [self.prefix_id], self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        context, continuation = split_pair(context, continuation)
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx):]

    # --- log-likelihood -----------------------------------------------------------------------
    @torch.inference_mode()
    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """log P(continuation | context) and whether greedy decoding would produce it."""
        enc = [self.encode_pair(c, x) for c, x in pairs]
        self.truncated = set()
        for i, (_, cont) in enumerate(enc):
            if not cont:
                raise ValueError(f"request {i}: empty continuation after tokenization ({pairs[i][1]!r})")
        # Left-truncate each context once for all its continuations (lm-eval cuts per request; the
        # two agree unless a context is cut), then run each request's tokens but its last: that
        # token predicts nothing scored and no query sees it (its log-probability comes from the
        # position before it).
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (ctx, _) in enumerate(enc):
            groups.setdefault(tuple(ctx), []).append(i)
        seqs: list[tuple[tuple[int, ...], int, list[int]]] = [((), 0, [])] * len(pairs)  # (run tokens, context length, continuation)
        for ctx, idx in groups.items():
            ctx = self._fit(list(ctx), [enc[i][1] for i in idx], idx)
            for i in idx:
                seqs[i] = (tuple(ctx + enc[i][1][:-1]), len(ctx), enc[i][1])
        rows = [[i] for i in range(len(pairs))] if self.mode == "rows" else self._tree_rows(seqs)
        rows = [self._layout(r, seqs) for r in rows]
        rows.sort(key=lambda r: -len(r[0]))  # longest first: a too-big batch fails at once, padding stays low
        out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        batch: list = []
        bar = progress_bar(len(pairs), "loglikelihood")
        for r in rows:
            if batch and (len(batch) + 1) * len(batch[0][0]) > self.batch_tokens:
                self._run(batch, out)
                bar.update(sum(len(b[3]) for b in batch))
                batch = []
            batch.append(r)
        if batch:
            self._run(batch, out)
            bar.update(sum(len(b[3]) for b in batch))
        bar.close()
        return out

    def _fit(self, ctx: list[int], conts: list[list[int]], idx: list[int]) -> list[int]:
        """Left-truncate the context so the context plus the longest continuation fit max_length."""
        longest = max(len(c) for c in conts)
        if longest >= self.max_length:
            raise ValueError(f"a continuation of {longest} tokens does not fit max_length {self.max_length}")
        if len(ctx) > self.max_length - longest:
            self.truncated.update(idx)
        return ctx[-(self.max_length - longest):]

    def _tree_rows(self, seqs) -> list[list[int]]:
        """Requests grouped into rows that each run a prefix tree: a token shared by several
        requests' prefixes (an item's context under all its choices, few-shot examples under
        several items, choices that start alike) is run once. Sorted by tokens, each request shares
        its longest prefix with the one before it; it joins that row when the row grown by its new
        tokens costs less than a row of its own (linear layers ~ T, attention ~ T² per row)."""
        cfg = self.model.config
        lin = 2 * sum(p.numel() for p in self.model.model.layers[0].parameters())  # FLOPs/token/layer
        att = 4 * cfg.n_heads * cfg.head_dim  # FLOPs per (query, key) pair per layer
        cost = lambda t: t * lin + t * t * att  # noqa: E731
        order = sorted(range(len(seqs)), key=lambda i: seqs[i][0])
        rows: list[list[int]] = []
        size, prev = 0, ()
        for i in order:
            s = seqs[i][0]
            n = len(s) - len(os.path.commonprefix([prev, s]))  # element-wise on any sequences
            if rows and size + n <= max(2048, len(s)) and cost(size + n) < cost(size) + cost(len(s)):
                rows[-1].append(i)
                size += n
            else:
                rows.append([i])
                size = len(s)
            prev = s
        return rows

    def _layout(self, row: list[int], seqs):
        """A row's prefix tree in depth-first order: the tokens, their depths (RoPE positions),
        where each node's subtree ends (a query sees key k iff k <= q < end[k]: k is on its path),
        and each request's positions that predict its continuation tokens."""
        ids: list[int] = []
        depth: list[int] = []
        path: list[int] = []  # node of each token of the previous request
        prev: tuple[int, ...] = ()
        targets = []  # (request index, positions predicting each continuation token, the tokens)
        for i in row:
            s, n_ctx, cont = seqs[i]
            keep = len(os.path.commonprefix([prev, s]))
            path = path[:keep] + list(range(len(ids), len(ids) + len(s) - keep))
            ids += s[keep:]
            depth += range(keep, len(s))
            # token cont[0] is predicted by the context's last position, cont[k] by cont[k-1]'s
            targets.append((i, path[n_ctx - 1:n_ctx - 1 + len(cont)], cont))
            prev = s
        end = list(range(1, len(ids) + 1))
        stack: list[int] = []
        for q, d in enumerate(depth):
            while stack and depth[stack[-1]] >= d:
                end[stack.pop()] = q
            stack.append(q)
        for k in stack:
            end[k] = len(ids)
        return ids, depth, end, targets

    def _run(self, batch, out: list[tuple[float, bool]]) -> None:
        B, T = len(batch), len(batch[0][0])
        ids = torch.zeros(B, T, dtype=torch.long)
        pos = torch.zeros(B, T, dtype=torch.long)
        end = torch.arange(1, T + 1).repeat(B, 1)  # a pad query sees itself only: no empty softmax rows
        for b, (row_ids, depth, row_end, _) in enumerate(batch):
            n = len(row_ids)
            ids[b, :n], pos[b, :n], end[b, :n] = torch.tensor(row_ids), torch.tensor(depth), torch.tensor(row_end)
        q, k = torch.arange(T)[:, None], torch.arange(T)[None, :]
        mask = (k <= q) & (q < end[:, None, :])
        h = self._hidden(ids.to(self.device), pos.to(self.device), mask[:, None].to(self.device))
        # The LM head runs only where a continuation token is predicted: with a 128k vocabulary
        # the head costs as much as several layers, and most packed positions are context.
        targets = [(i, b, pr, c) for b, row in enumerate(batch) for i, pr, c in row[3]]
        flat_b = torch.tensor([b for _, b, pr, _ in targets for _ in pr], device=self.device)
        flat_p = torch.tensor([q for _, _, pr, _ in targets for q in pr], device=self.device)
        tgt_all = torch.tensor([t for *_, c in targets for t in c], device=self.device)
        token_ll: list[float] = []
        token_greedy: list[bool] = []
        for s in range(0, len(tgt_all), 1024):  # bounded (rows × vocab) fp32 memory
            logp = torch.log_softmax(self.model.lm_head(h[flat_b[s:s + 1024], flat_p[s:s + 1024]]).float(), dim=-1)
            tgt = tgt_all[s:s + 1024]
            token_ll += logp.gather(-1, tgt[:, None])[:, 0].tolist()
            token_greedy += (logp.argmax(-1) == tgt).tolist()
        at = 0
        for i, _, _, c in targets:
            out[i] = (sum(token_ll[at:at + len(c)]), all(token_greedy[at:at + len(c)]))
            at += len(c)

    def _hidden(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """CausalLM.forward up to the final norm (same steps; the model's own parity tests and
        ours against transformers cover both)."""
        m = self.model
        h = m.model.embed_tokens(ids)
        cos, sin = m.rope(pos, h.dtype)
        for layer in m.model.layers:
            h = layer(h, cos, sin, mask, None)
        return m.model.norm(h)

    # --- generation ---------------------------------------------------------------------------
    def generate(self, requests: Sequence[Request]) -> list[str]:
        """Greedy generation through `kollm serve`'s continuous-batching engine, run offline:
        prompts queued longest first, a finished row's place taken by the next prompt at the next
        step (a static batch waits for its longest row), decode step compiled where `compile` says."""
        from kollm.data.chat import encode_prompt, stop_token_ids
        from kollm.model.generate import use_compile
        from kollm.serve.engine import Engine, SamplingParams
        from kollm.serve.engine import Request as EngineRequest

        self.truncated = set()  # requests whose prompt lost its start to fit the context (the harness counts them)
        jobs = []  # (request index, prompt ids, sampling params)
        for i, r in enumerate(requests):
            # The prompt keeps its last (max_length - max_new) tokens, as lm-eval does; a budget that
            # leaves it nothing (CoT and IFEval ask for 1,024+ tokens) is capped at half the context.
            max_new = r.max_new_tokens if r.max_new_tokens < self.max_length else self.max_length // 2
            text = r.args[0]
            ids = encode_prompt(self.tokenizer, text, True, self.system_prompt) if r.chat else self.encode(text)
            if len(ids) > self.max_length - max_new:
                self.truncated.add(i)
            ids = (ids or [self.prefix_id])[-(self.max_length - max_new):]
            jobs.append((i, ids, SamplingParams(max_tokens=max_new, temperature=0.0, stop=tuple(r.stop))))
        jobs.sort(key=lambda j: -len(j[1]))  # similar lengths prefill together, the longest first
        bound = max((len(ids) + p.max_tokens for _, ids, p in jobs), default=1)
        engine = Engine(self.model, self.tokenizer, stop_token_ids(self.tokenizer), max_batch=self.gen_rows,
                        kv_budget_tokens=max(bound, self.gen_rows * bound), max_prefill_tokens=self.batch_tokens * 4,
                        compile=use_compile(self.compile, self.device, self.model))
        reqs = [EngineRequest([ids], p, 1, None, stream=False) for _, ids, p in jobs]
        bar = progress_bar(len(requests), "generate")
        engine.run(reqs, progress=bar.update)
        bar.close()
        out = [""] * len(requests)
        for (i, *_), q in zip(jobs, reqs):
            got = q.done[0] if q.done else None
            if got is None or isinstance(got, Exception):  # this sequence failed (NaN logits...), not the run
                out[i] = Failed("engine_error", str(got)[:300] if got else "no output")
            else:
                out[i] = cut_at_stop(got[0].text, requests[i].stop)
        return out


class EndpointUnusable(ValueError):
    """HTTP 401/403/404: the URL or key is wrong for every request, not for this one."""


class OpenAIEndpoint:
    """Generation through an OpenAI-compatible server (vLLM, SGLang, kollm serve, the OpenAI API):
    `/v1/chat/completions` for chat requests, `/v1/completions` for raw prompts; greedy
    (temperature 0). Log-likelihood is not offered: chat endpoints do not return prompt logprobs."""

    def __init__(self, base_url: str, model: str = "default", api_key: str | None = None,
                 timeout: float = 600.0, concurrency: int = 8, chat: bool | None = None):
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.model_name, self.timeout, self.concurrency = model, timeout, concurrency
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.force_chat = chat
        self.system_prompt: str | None = None  # chat requests: a system message first
        self.name = f"{self.base_url}#{model}"

    def loglikelihood(self, pairs):
        raise ValueError(f"{self.name}: an OpenAI-compatible endpoint serves generation tasks only; "
                         "multiple-choice tasks need a local checkpoint")

    def _post(self, route: str, body: dict) -> dict:
        req = urllib.request.Request(self.base_url + route, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            msg = f"{self.base_url}{route}: HTTP {e.code}: {e.read()[:300]!r}"
            if e.code in (401, 403, 404):  # a wrong URL or key: every request would fail the same way
                raise EndpointUnusable(msg) from None
            raise ValueError(msg) from None

    def _one(self, r: Request) -> str:
        """The completion, or Failed naming why this one request has none (the run goes on; an
        unreachable server still stops it: every request would fail)."""
        chat = r.chat if self.force_chat is None else self.force_chat
        body = {"model": self.model_name, "max_tokens": r.max_new_tokens, "temperature": 0.0}
        if r.stop:
            body["stop"] = list(r.stop)[:4]  # the OpenAI API takes at most 4; the rest are cut below
        try:
            if chat:
                system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
                resp = self._post("/chat/completions",
                                  {**body, "messages": [*system, {"role": "user", "content": r.args[0]}]})
                text = resp["choices"][0]["message"]["content"] or ""
            else:
                text = self._post("/completions", {**body, "prompt": r.args[0]})["choices"][0]["text"]
        except EndpointUnusable:
            raise
        except ValueError as e:  # HTTP 4xx/5xx for this prompt, or a body that is not JSON
            return Failed("endpoint_error", str(e)[:300])
        except (KeyError, IndexError, TypeError) as e:
            return Failed("malformed_reply", f"{type(e).__name__}: {e}")
        if not isinstance(text, str):
            return Failed("malformed_reply", f"completion is {type(text).__name__}, not text")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (a "\ud800" escape in the JSON): not text any tokenizer made
            return Failed("invalid_unicode", text.encode("utf-8", "replace").decode("utf-8"))
        return cut_at_stop(text, r.stop)

    def generate(self, requests: Sequence[Request]) -> list[str]:
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self._one, requests))


def load_model(spec: str, device: str = "cpu", endpoint_model: str = "default", **kw) -> LocalLM | OpenAIEndpoint:
    """`http(s)://host:port[/v1]` → OpenAIEndpoint; a directory → LocalLM."""
    if spec.startswith(("http://", "https://")):
        return OpenAIEndpoint(spec, model=endpoint_model)
    p = Path(spec)
    if not p.is_dir():
        raise FileNotFoundError(f"--model {spec}: not a checkpoint directory nor an http(s) endpoint URL")
    return LocalLM(p, device=device, **kw)
