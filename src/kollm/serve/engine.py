"""Continuous batching over kollm's KV-cache decoder: one thread owns the model, requests queue to it.

Iteration-level scheduling as in Orca (Yu et al., OSDI '22) and vLLM: every iteration runs one
decode step for all running sequences, then prefills whatever waiting sequences fit and merges
them into the running batch, so a request joins at the next step instead of waiting for the batch
to drain. The mechanics are `kollm.model.generate`'s: left padding, per-row RoPE positions that
count only real tokens, an explicit boolean mask over real keys, and the same static KV cache and
one-token step (`generate.forward_static`, `generate.decode_step`), compiled with `compile=True`.
The scheduling stays here: rows join and leave between steps, so the batch is rebuilt (a new
static cache of the new rows x width) where `generate` keeps one shape for a whole request.
Compiled, the first rebuild to a new shape makes dynamo mark the sizes dynamic (one more graph,
then no recompiles); CUDA graphs are not used here (a CUDA graph is recorded per shape and per
buffer address, and every rebuild brings both new): inductor's kernels only. Finished rows are
dropped. Here the cache is also *re-aligned*: every row's keys are contiguous and end at the last
filled column, so a freshly prefilled batch is merged by right-aligning both caches, and the
columns no live row uses any more are trimmed whenever rows leave. A row therefore attends to exactly its own tokens,
whatever its batch-mates are: at temperature 0 it gets the tokens it would get alone (up to the
floating-point summation order of batched kernels, which argmax does not see in practice).

Sampling follows `generate.next_tokens` (temperature → top-k → top-p → multinomial). A sequence
with a `seed` owns a `torch.Generator` seeded with it, so its draws do not depend on batch-mates;
sequences without one share the engine's generator.

Memory is bounded before anything runs: a sequence is admitted only while
(rows) × (longest prompt + max_tokens among rows) ≤ `kv_budget_tokens`, so the KV cache never
outgrows its budget; a prefill batch holds at most `max_prefill_tokens` padded tokens (a single
prompt always goes: the server already refused prompts beyond the context) and runs in chunks of
max_prefill_tokens / rows query columns, so its attention is never quadratic in a long prompt.

Weights can be replaced while serving (`update_weights`, behind `kollm serve --allow-weight-updates`),
as SGLang's `update_weights_from_disk` does it: the update waits for the sequences already running
to finish (they complete with the weights they started with), sequences arriving meanwhile wait,
then the model thread copies the checked checkpoint into the parameters in place between two
iterations, never during one. Every completion therefore comes from one set of weights. A
checkpoint whose config or tensors do not match, or with a NaN or infinite tensor, is refused
before anything is copied; a copy that fails half-way is rolled back by reloading the weights
served before. Each request records the weights version (the number of updates applied) its
sequences were admitted under: a non-streamed reply's `system_fingerprint`, the server's own record of which
weights answered.

A failure while sampling or detokenising one sequence (a NaN row of logits, a tokenizer error)
fails only that sequence's request; its batch-mates go on as if it had finished. Only a failure of
the batched forward pass itself fails every running request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from kollm.model.generate import GenerationConfig, decode_step, forward_static, sampling_logits
from kollm.model.hf import check_finite, check_weight_update, load_weights_into
from kollm.model.transformer import CausalLM, StaticKVCache


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0: greedy (argmax)
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; k >= 0: the chosen token's logprob and the k most likely

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5  # vLLM's threshold for "temperature 0"


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, logprob), most likely first


@dataclass
class Output:
    """What one choice produced in one step; `text` is the newly released text."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None = None  # "stop" | "length" once finished


class EngineError(RuntimeError):
    pass


class QueueFull(RuntimeError):
    pass


@dataclass
class Sequence:
    req: Request
    index: int  # choice index in the reply
    prompt: list[int]
    params: SamplingParams
    generator: torch.Generator | None = None
    out: list[int] = field(default_factory=list)
    text: str = ""  # decoded text so far (cut at a stop string once one appears)
    sent: int = 0  # characters of `text` already released
    logprobs: list[TokenLogprob] = field(default_factory=list)  # kept for a non-streamed reply
    prefix_offset: int = 0  # incremental detokenisation window (as in TGI / vLLM)
    read_offset: int = 0

    @property
    def bound(self) -> int:
        return len(self.prompt) + self.params.max_tokens


class Request:
    """One HTTP request's choices. The model thread puts lists of `Output` (or an `EngineError`)
    on `queue`, through the event loop that created the request."""

    def __init__(self, prompts: list[list[int]], params: SamplingParams, n: int,
                 loop: asyncio.AbstractEventLoop | None, stream: bool = True):
        # loop None: offline (`Engine.run`), what the model thread puts is kept in `done`
        self.loop, self.queue = loop, asyncio.Queue() if loop is not None else None
        self.done: list = []
        self.cancelled = False
        self.weights: set[int] = set()  # the weights versions its sequences were admitted under
        self.stream = stream  # False: one Output per choice, when it finishes (no per-step wake-ups)
        self.seqs = [Sequence(self, p * n + j, list(prompt), params) for p, prompt in enumerate(prompts)
                     for j in range(n)]

    def put(self, item) -> None:
        if self.loop is None:
            self.done.append(item)
            return
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled = True


class _Batch:
    """The running sequences, their static KV cache (columns [0, cache.pos) filled; row b's real keys are
    the last len_b of them), the pending token of each row (sampled, not yet in the cache) and the
    RoPE position it will take."""

    def __init__(self, seqs: list[Sequence], cache: StaticKVCache, valid: torch.Tensor, tok: torch.Tensor,
                 next_pos: torch.Tensor):
        self.seqs, self.cache, self.valid, self.tok, self.next_pos = seqs, cache, valid, tok, next_pos


class Engine:
    def __init__(self, model: CausalLM, tokenizer, stop_token_ids: list[int], *, max_batch: int = 64,
                 kv_budget_tokens: int = 1 << 18, max_prefill_tokens: int = 8192, max_queue: int = 4096,
                 seed: int | None = None, grow: int = 128, compile: bool = False, weights_path: str | None = None):
        self.model = model.eval()
        self.weights_path = weights_path  # the checkpoint served now: what a failed update rolls back to
        self.update: tuple[str, concurrent.futures.Future] | None = None  # pending; the model thread applies it
        param = next(model.parameters())
        self.device, self.dtype, self.cfg = param.device, param.dtype, model.config
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_token_ids)
        self.max_batch, self.kv_budget, self.max_prefill = max_batch, kv_budget_tokens, max_prefill_tokens
        self.max_queue, self.grow = max_queue, grow
        self.step = decode_step(self.device, compile, cuda_graphs=False)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed if seed is not None else int(time.time_ns() % (1 << 62)))
        self.waiting: deque[Sequence] = deque()
        self.cv = threading.Condition()
        self.batch: _Batch | None = None
        self.closing = False
        self.stats = {"running": 0, "waiting": 0, "peak_running": 0, "steps": 0, "row_steps": 0, "prefills": 0,
                      "generated_tokens": 0, "finished": 0, "cancelled": 0, "failed": 0, "weight_updates": 0}
        self.update_queued_at = 0  # finished + cancelled + failed when the pending update was queued
        self.thread = threading.Thread(target=self._run, name="kollm-serve-model", daemon=True)

    # ---- called from the HTTP side ------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        with self.cv:
            self.closing = True
            self.cv.notify()
        self.thread.join(timeout=10)
        if self.update is not None and not self.update[1].done():
            self.update[1].set_result((503, "the server is shutting down; weights not updated"))

    def update_weights(self, path: str) -> concurrent.futures.Future:
        """Queue a weight update from the checkpoint directory `path`; the future resolves to
        (HTTP status, message) once the model thread has applied it (200), refused the checkpoint
        (400: nothing changed) or failed reading it and rolled back (500). One at a time."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self.cv:
            if self.update is not None:
                raise RuntimeError("a weight update is already in progress")
            self.update = (path, fut)
            self.update_queued_at = self._ended()
            self.cv.notify()
        return fut

    def submit(self, req: Request) -> None:
        for s in req.seqs:
            if s.params.seed is not None:
                # Choice i of a seeded request draws from its own generator seeded seed + i.
                s.generator = torch.Generator(device=self.device).manual_seed(s.params.seed + s.index)
        with self.cv:
            if len(self.waiting) + len(req.seqs) > self.max_queue:
                raise QueueFull(f"server busy: {len(self.waiting)} sequences waiting (max {self.max_queue})")
            self.waiting.extend(req.seqs)
            self.stats["waiting"] = len(self.waiting)
            self.cv.notify()

    def cancel(self, req: Request) -> None:
        """The client went away: its sequences leave the batch at the next iteration."""
        req.cancelled = True
        with self.cv:
            self.cv.notify()

    # ---- the model thread -----------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self.cv:
                    while not self.closing and self.batch is None and not self.waiting and self.update is None:
                        self.cv.wait()
                    if self.closing:
                        return
                    # A pending update admits nobody: the running rows drain, then it applies.
                    new = self._take() if self.update is None else []
                if self.update is not None and self.batch is None:
                    self._apply_update()
                    continue
                self._iterate(new)

    def run(self, reqs: list[Request], progress: Callable[[int], object] | None = None) -> None:
        """Offline batch generation in the calling thread (the model thread not started): the
        requests (made with loop=None) are queued in order and served to completion by the same
        iterations as the server's; each request's outputs are then in its `done`. `progress(n)`
        hears how many sequences ended at each step (a progress bar's update)."""
        for r in reqs:
            if max(s.bound for s in r.seqs) > self.kv_budget:
                raise ValueError(f"a sequence needs {max(s.bound for s in r.seqs)} cache tokens, more than "
                                 f"kv_budget_tokens {self.kv_budget}")
        self.max_queue = max(self.max_queue, sum(len(r.seqs) for r in reqs))
        for r in reqs:
            self.submit(r)
        ended = self._ended()
        with torch.inference_mode():
            while self.waiting or self.batch is not None:
                self._iterate(self._take())
                if progress is not None and self._ended() > ended:
                    progress(self._ended() - ended)
                    ended = self._ended()

    def _iterate(self, new: list[Sequence]) -> None:
        """One decode step of the running rows, then the prefill of `new` into the batch."""
        try:
            self._drop_cancelled()
            if self.batch is not None:
                self._decode_step()
            if new:
                self._prefill(new)
        except Exception as e:  # never leave a client waiting on a dead thread
            self._fail([s for s in (self.batch.seqs if self.batch else [])] + new, e)
            self.batch = None
        self.stats["running"] = len(self.batch.seqs) if self.batch else 0

    def _ended(self) -> int:
        return self.stats["finished"] + self.stats["cancelled"] + self.stats["failed"]

    def _apply_update(self) -> None:
        path, fut = self.update
        waited = self._ended() - self.update_queued_at  # the sequences it waited for (the server's record)
        try:
            plan = check_weight_update(self.model, path)  # headers only: a refusal changes nothing
            check_finite(plan)  # reads every tensor once (one at a time); still nothing changed
        except (OSError, ValueError) as e:
            result = (400, f"weights not updated: {e}")
        else:
            try:
                load_weights_into(self.model, plan)
                self.weights_path = str(path)
                self.stats["weight_updates"] += 1
                result = (200, f"weights updated from {path} (after {waited} running sequences finished)")
            except Exception as e:  # read error half-way: put the served weights back
                result = (500, f"weights not updated: reading {path} failed ({type(e).__name__}: {e}); "
                          + self._roll_back(str(path)))
        with self.cv:
            self.update = None
        if not fut.done():  # stop() answers an update it could not wait for
            fut.set_result(result)

    def _roll_back(self, failed: str) -> str:
        try:
            load_weights_into(self.model, check_weight_update(self.model, self.weights_path))
            # GRPO reuses one directory: then "again" means what it holds now
            same = " (the directory of this update: as it is now)" if failed == self.weights_path else ""
            return f"the weights of {self.weights_path} are served again{same}"
        except Exception as e:
            self.stats["weights_inconsistent"] = 1
            return f"rolling back to {self.weights_path} failed too ({e}): restart the server"

    def _take(self) -> list[Sequence]:
        """Pop the waiting sequences (FIFO) that fit the batch, KV and prefill budgets."""
        rows = self.batch.seqs if self.batch else []
        width = max((s.bound for s in rows), default=0)
        taken: list[Sequence] = []
        longest = 0
        while self.waiting:
            s = self.waiting[0]
            if s.req.cancelled:
                self.waiting.popleft()
                self.stats["cancelled"] += 1
                continue
            b, w, L = len(rows) + len(taken) + 1, max(width, s.bound), max(longest, len(s.prompt))
            if b > self.max_batch or b * w > self.kv_budget or (taken and (len(taken) + 1) * L > self.max_prefill):
                break
            taken.append(self.waiting.popleft())
            width, longest = w, L
        self.stats["waiting"] = len(self.waiting)
        return taken

    def _drop_cancelled(self) -> None:
        b = self.batch
        if b is None:
            return
        keep = [i for i, s in enumerate(b.seqs) if not s.req.cancelled]
        if len(keep) < len(b.seqs):
            self.stats["cancelled"] += len(b.seqs) - len(keep)
            self.batch = self._rebuild([(b, keep)]) if keep else None

    def _prefill(self, seqs: list[Sequence]) -> None:
        # Exactly generate._decode's prefill: left padding, positions over real tokens only.
        B, L = len(seqs), max(len(s.prompt) for s in seqs)
        ids = torch.zeros(B, L, dtype=torch.long, device=self.device)
        valid = torch.zeros(B, L, dtype=torch.bool, device=self.device)
        for i, s in enumerate(seqs):
            ids[i, L - len(s.prompt):] = torch.tensor(s.prompt, dtype=torch.long)
            valid[i, L - len(s.prompt):] = True
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        cache = StaticKVCache(self.cfg, B, L, self.device, self.dtype)
        # Chunked prefill: C query columns at a time against the cache, so the mask and attention
        # scores are B x C x L, never B x L x L (a long prompt cannot exhaust memory). One chunk
        # when the prompts are short: then it is generate's prefill exactly.
        C = max(1, self.max_prefill // B)
        keys = torch.arange(L, device=self.device)
        for a in range(0, L, C):
            b = min(L, a + C)
            q = keys[a:b]
            mask = (keys[None, :] <= q[:, None])[None] & valid[:, None, :]
            mask[:, torch.arange(b - a, device=self.device), q] = True  # a pad query sees itself: no empty softmax
            cache.index = q
            logits = forward_static(self.model, ids[:, a:b], positions[:, a:b], mask[:, None], cache)
        cache.pos = L
        self.stats["prefills"] += 1
        for s in seqs:
            s.req.weights.add(self.stats["weight_updates"])
        tok, keep = self._sample(seqs, logits)
        part = _Batch(seqs, cache, valid, tok, positions[:, -1] + 1)
        if keep:
            parts = ([(self.batch, list(range(len(self.batch.seqs))))] if self.batch else []) + [(part, keep)]
            self.batch = self._rebuild(parts)
            self.stats["peak_running"] = max(self.stats["peak_running"], len(self.batch.seqs))

    def _decode_step(self) -> None:
        b = self.batch
        if b.cache.pos == b.cache.max_len:
            b = self.batch = self._rebuild([(b, list(range(len(b.seqs))))])
        b.valid[:, b.cache.pos] = True
        b.cache.index.fill_(b.cache.pos)
        logits = self.step(self.model, b.tok, b.next_pos, b.valid, b.cache)
        b.cache.pos += 1
        b.next_pos = b.next_pos + 1
        self.stats["steps"] += 1
        self.stats["row_steps"] += len(b.seqs)  # row_steps / steps: the mean decode batch
        b.tok, keep = self._sample(b.seqs, logits)
        if len(keep) < len(b.seqs):
            self.batch = self._rebuild([(b, keep)]) if keep else None

    def _rebuild(self, parts: list[tuple[_Batch, list[int]]]) -> _Batch:
        """A new batch from rows of old ones: each row's keys copied right-aligned to the new last
        column, leading columns no row uses trimmed, room for `grow` more steps (never beyond what
        the rows can still use)."""
        dev = self.device
        lens = [b.valid[idx, :b.cache.pos].sum(-1) for b, idx in parts]
        width = max(int(x.max()) for x in lens)
        seqs = [b.seqs[i] for b, idx in parts for i in idx]
        rows = torch.cat(lens)
        # row r's keys will end at column width - len_r + (prompt + max_tokens - 1)
        need = int((width - rows + torch.tensor([s.bound - 1 for s in seqs], device=dev)).max())
        cap = max(width + 1, min(width + self.grow, need))
        cache = StaticKVCache(self.cfg, len(seqs), cap, dev, self.dtype)  # filled in place below
        valid = torch.zeros(len(seqs), cap, dtype=torch.bool, device=dev)
        r = 0
        for (b, idx), n in zip(parts, lens):
            S, w, sel = b.cache.pos, int(n.max()), torch.tensor(idx, device=dev)
            for layer in range(self.cfg.n_layers):
                cache.k[layer][r:r + len(idx), :, width - w:width] = b.cache.k[layer][sel, :, S - w:S]
                cache.v[layer][r:r + len(idx), :, width - w:width] = b.cache.v[layer][sel, :, S - w:S]
            valid[r:r + len(idx), width - w:width] = b.valid[sel, S - w:S]
            r += len(idx)
        cache.pos = width
        tok = torch.cat([b.tok[torch.tensor(idx, device=dev)] for b, idx in parts])
        next_pos = torch.cat([b.next_pos[torch.tensor(idx, device=dev)] for b, idx in parts])
        return _Batch(seqs, cache, valid, tok, next_pos)

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Choose each row's next token, release its text, decide whether it goes on."""
        tok = torch.zeros(len(seqs), dtype=torch.long, device=self.device)
        # A row that fails (NaN logits, a sampler error) fails its own request only: it is taken out
        # before anything batched is drawn or decoded from it, so its batch-mates are unaffected.
        failed: dict[int, str] = {i: "the model's logits are NaN" for i in
                                  logits.isnan().any(dim=-1).nonzero()[:, 0].tolist()}
        greedy = [i for i, s in enumerate(seqs) if s.params.greedy and i not in failed]
        if greedy:
            tok[greedy] = logits[greedy].argmax(dim=-1)
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(seqs):
            if not s.params.greedy and i not in failed:
                groups.setdefault((s.params.temperature, s.params.top_k, s.params.top_p), []).append(i)
        for (temperature, top_k, top_p), idx in groups.items():
            try:
                cfg = GenerationConfig(max_new_tokens=1, do_sample=True, temperature=temperature, top_k=top_k,
                                       top_p=top_p)
                probs = sampling_logits(logits[idx], cfg).softmax(dim=-1)
                bad = (~torch.isfinite(probs).all(dim=-1) | ~(probs.sum(dim=-1) > 0)).nonzero()[:, 0].tolist()
            except Exception as e:
                failed.update((i, f"sampling failed: {type(e).__name__}: {e}") for i in idx)
                continue
            failed.update((idx[j], f"no valid sampling distribution (temperature {temperature}, top_p {top_p})")
                          for j in bad)
            shared = [j for j, i in enumerate(idx) if seqs[i].generator is None and i not in failed]
            if shared:
                tok[[idx[j] for j in shared]] = torch.multinomial(probs[shared], 1, generator=self.generator)[:, 0]
            for j, i in enumerate(idx):
                if seqs[i].generator is not None and i not in failed:  # (1, V) per row, as generate draws alone
                    tok[i] = torch.multinomial(probs[j:j + 1], 1, generator=seqs[i].generator)[0, 0]
        want = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
        lp_rows: dict[int, TokenLogprob] = {}
        if want:
            lp = logits[want].float().log_softmax(dim=-1)  # the model's own distribution (vLLM's raw logprobs)
            chosen = lp.gather(-1, tok[want][:, None])[:, 0].tolist()
            k = max(seqs[i].params.logprobs for i in want)
            top_v, top_i = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0].long())
            top_v, top_i = top_v.tolist(), top_i.tolist()
            for j, i in enumerate(want):
                kk = seqs[i].params.logprobs
                lp_rows[i] = TokenLogprob(int(tok[i]), chosen[j], list(zip(top_i[j][:kk], top_v[j][:kk])))
        ids = tok.tolist()
        keep: list[int] = []
        by_req: dict[int, tuple[Request, list[Output]]] = {}
        for i, (s, t) in enumerate(zip(seqs, ids)):
            if s.req.cancelled:  # its client left, or a sibling sequence failed
                self.stats["cancelled"] += 1
                continue
            try:
                if i in failed:
                    raise EngineError(failed[i])
                out = self._release(s, t, [lp_rows[i]] if i in lp_rows else None)
            except Exception as e:
                self.stats["failed"] += 1
                s.req.cancelled = True  # its other sequences leave too
                by_req.pop(id(s.req), None)
                s.req.put(e if isinstance(e, EngineError) else
                          EngineError(f"generation failed: {type(e).__name__}: {e}"))
                continue
            if out is None or out.finish_reason is None:
                keep.append(i)
            if out is not None:
                by_req.setdefault(id(s.req), (s.req, []))[1].append(out)
        for req, outs in by_req.values():
            if not req.cancelled:
                req.put(outs)
        return tok, keep

    def _release(self, s: Sequence, t: int, lp: list[TokenLogprob] | None) -> Output | None:
        """Append token t to s; the Output to send now (None: nothing yet, s goes on)."""
        s.out.append(t)
        self.stats["generated_tokens"] += 1
        # Text is decoded as it comes only where it is needed now: streams and stop strings.
        incremental = s.req.stream or bool(s.params.stop)
        finish = "stop" if t in self.stop_ids and not s.params.ignore_eos else None
        if incremental:
            self._detokenize(s)
            if s.params.stop and self._cut_at_stop(s):
                finish = "stop"
        if finish is None and len(s.out) >= s.params.max_tokens:
            finish = "length"
        if s.req.stream:
            hold = max(map(len, s.params.stop), default=1) - 1 if finish is None else 0
            upto = max(s.sent, len(s.text) - hold)  # a stop string may still be forming: hold it back
            out = Output(s.index, s.text[s.sent:upto], [t], lp, finish)
            s.sent = upto
        else:
            s.logprobs += lp or []
            if finish is None:
                return None
            text = s.text if incremental else self.tokenizer.decode(s.out, skip_special_tokens=True)
            out = Output(s.index, text, s.out, s.logprobs if s.params.logprobs is not None else None, finish)
        if finish is not None:
            self.stats["finished"] += 1
        return out

    def _detokenize(self, s: Sequence) -> None:
        """Append the text of the new token: decode a short window of ids and hold back a
        trailing incomplete UTF-8 character (the TGI / vLLM incremental scheme)."""
        dec = self.tokenizer.decode
        prefix = dec(s.out[s.prefix_offset:s.read_offset], skip_special_tokens=True)
        full = dec(s.out[s.prefix_offset:], skip_special_tokens=True)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            s.text += full[len(prefix):]
            s.prefix_offset, s.read_offset = s.read_offset, len(s.out)
        elif len(s.out) >= s.params.max_tokens or s.out[-1] in self.stop_ids:
            s.text += full[len(prefix):]  # last token: release whatever is there

    @staticmethod
    def _cut_at_stop(s: Sequence) -> bool:
        longest = max(map(len, s.params.stop))
        start = max(0, s.sent - longest)
        hits = [j for j in (s.text.find(x, start) for x in s.params.stop) if j >= 0]
        if hits:
            s.text = s.text[:min(hits)]
            return True
        return False

    def _fail(self, seqs: list[Sequence], err: Exception) -> None:
        self.stats["failed"] += len(seqs)
        reqs = {id(s.req): s.req for s in seqs}
        for req in reqs.values():
            req.put(EngineError(f"generation failed: {type(err).__name__}: {err}"))
        import traceback

        traceback.print_exception(err)
