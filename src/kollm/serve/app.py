"""The OpenAI-compatible HTTP API (FastAPI): `/v1/chat/completions`, `/v1/completions`,
`/v1/models`, `/health`, and with `allow_weight_updates` SGLang's `/update_weights_from_disk`.

Request and reply shapes follow the OpenAI API as the official `openai` client types it and as
vLLM's OpenAI server implements it: the same defaults (temperature 1, top_p 1, max_tokens = what
the context leaves), `temperature` 0 = greedy, the error body `{"error": {"message", "type",
"param", "code"}}`, streaming as server-sent events ending in `data: [DONE]`, a role-only first
chunk per chat choice and an optional usage chunk (`stream_options.include_usage`). Extensions
taken from vLLM: `top_k`, `ignore_eos`, `return_tokens_as_token_ids` (logprob tokens as
`token_id:N`), `return_token_ids` on /v1/completions (each choice's sampled ids as `token_ids`: what
GRPO's ServerRollout trains on, since re-tokenising text does not give the sampled ids back). Everything that would change the output and is not
implemented (penalties, logit_bias, tools, response_format, echo, suffix, best_of) is a 400, never
silently ignored.

Limits are checked before a request reaches the model, each with a one-line 4xx: body size (413,
chunked bodies counted as they arrive; the rest of an oversized body is read and discarded so the
client gets the answer, not a reset), a body not received within `body_timeout` (408), a body that
is not JSON or nests too deep (400), a NaN or infinite number anywhere in the body (400 naming the
field: Python's json accepts `NaN` and `Infinity`), `n`, `max_tokens`, `logprobs`/`top_logprobs`,
prompt + max_tokens against the model's context and against the server's KV budget (400), a full
queue (429). A client that disconnects — mid-stream or while waiting for a non-streamed reply —
cancels its sequences, which leave the batch at the next step. Non-streamed replies carry
`system_fingerprint` = `kollm-weights-V`, V the weights version (updates applied) that answered.

`POST /update_weights_from_disk` takes SGLang's body `{"model_path": DIR}` and answers in SGLang's
shape, `{"success": bool, "message": str, "num_paused_requests": 0}`, HTTP 200 or 400 (500 when
a copy failed half-way and was rolled back): the engine loads DIR's weights in place once the
running sequences finished (engine.py). It reads files from the server's disk, so it exists only
when the server was started with `--allow-weight-updates`, only for directories under the
`--weights-root` given then (real paths: `..` and symlinks, of the directory or of a file in it,
cannot leave it; a relative model_path is taken under the root), and the API key guards it as it
guards /v1 (every route but /health).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from kollm.data.chat import render_prompt
from kollm.serve.engine import Engine, EngineError, Output, QueueFull, SamplingParams
from kollm.serve.engine import Request as GenRequest


@dataclass
class Limits:
    context: int  # the model's max_position_embeddings
    max_tokens: int  # largest max_tokens a request may ask for
    max_n: int = 16
    max_logprobs: int = 20  # OpenAI's top_logprobs maximum
    max_body_bytes: int = 1 << 20
    max_stop: int = 16
    body_timeout: float = 60.0  # seconds to receive a whole body (408 after)


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError", 408: "BadRequestError",
               413: "BadRequestError", 429: "RateLimitError", 500: "InternalServerError"}


def error_body(status: int, message: str, param: str | None = None) -> dict:
    return {"object": "error", "error": {"message": message, "type": ERROR_TYPES.get(status, "APIError"),
                                         "param": param, "code": status}}


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 429 else None
    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)


# ---- request parsing ---------------------------------------------------------------------------
def parse_body(data: bytes) -> dict:
    """The JSON object of a request body. Python's json accepts NaN, Infinity and 1e999 (inf);
    a NaN temperature once reached the sampler and failed every request in its batch, so any
    non-finite number is a 400 naming where it is. Nesting beyond the interpreter's recursion
    limit is a 400 too (json raises RecursionError)."""
    seen = []  # non-finite literals: the body is searched for them only if there are any

    def constant(c: str) -> float:
        seen.append(c)
        return float(c)

    def number(x: str) -> float:
        v = float(x)
        if math.isinf(v):
            seen.append(x)
        return v

    try:
        body = json.loads(data, parse_constant=constant, parse_float=number)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise APIError(400, "request body nests too deep") from None
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object")
    if seen:
        stack: list[tuple[str, object]] = [(k, v) for k, v in reversed(body.items())]
        while stack:  # iterative: the body may nest hundreds deep
            where, v = stack.pop()
            if isinstance(v, float) and not math.isfinite(v):
                top = where.split("[")[0].split(".")[0]
                raise APIError(400, f"'{where}' must be a finite number, got {json.dumps(v)}", top)
            if isinstance(v, dict):  # pushed in reverse: the first one in the body is named
                stack += [(f"{where}.{k}", x) for k, x in reversed(v.items())]
            elif isinstance(v, list):
                stack += [(f"{where}[{i}]", x) for i, x in reversed(list(enumerate(v)))]
    return body


def _get(body: dict, key: str, kinds: tuple[type, ...], default=None, lo=None, hi=None):
    """A field of the JSON body, type- and range-checked; null counts as absent (as in the API)."""
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) and bool not in kinds:  # JSON true is not a number here
        raise APIError(400, f"'{key}' must be {' or '.join(k.__name__ for k in kinds)}, got {v!r}", key)
    if not isinstance(v, kinds):
        raise APIError(400, f"'{key}' must be {' or '.join(k.__name__ for k in kinds)}, got {type(v).__name__}", key)
    if isinstance(v, float) and not math.isfinite(v):
        raise APIError(400, f"'{key}' must be a finite number, got {v}", key)
    if lo is not None and v < lo or hi is not None and v > hi:
        raise APIError(400, f"'{key}' must be in [{lo}, {hi}], got {v}", key)
    return v


_UNSUPPORTED = {"presence_penalty": 0, "frequency_penalty": 0, "repetition_penalty": 1, "logit_bias": {},
                "tools": [], "functions": [], "response_format": {"type": "text"}, "echo": False, "suffix": None,
                "best_of": 1, "min_tokens": 0}


def _check_unsupported(body: dict) -> None:
    for key, neutral in _UNSUPPORTED.items():
        v = body.get(key)
        if v is not None and v != neutral and not (key == "response_format" and v == {"type": "text"}):
            raise APIError(400, f"'{key}' is not supported by kollm serve", key)


def sampling_fields(body: dict, limits: Limits, prompt_lens: list[int], max_tokens_key: str,
                    logprobs: int | None) -> tuple[SamplingParams, int]:
    """Shared fields → (SamplingParams, n), with every bound checked."""
    _check_unsupported(body)
    n = _get(body, "n", (int,), 1, 1, limits.max_n)
    temperature = float(_get(body, "temperature", (int, float), 1.0, 0, 2))
    top_p = float(_get(body, "top_p", (int, float), 1.0, 0, 1))
    if top_p <= 0:
        raise APIError(400, "'top_p' must be in (0, 1], got 0", "top_p")
    top_k = _get(body, "top_k", (int,), 0, -1)
    seed = _get(body, "seed", (int,), None, -(1 << 63), (1 << 63) - 1)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise APIError(400, "'stop' must be a non-empty string or a list of them", "stop")
    if len(stop) > limits.max_stop:
        raise APIError(400, f"'stop' has {len(stop)} strings; at most {limits.max_stop}", "stop")
    ignore_eos = _get(body, "ignore_eos", (bool,), False)
    longest = max(prompt_lens)
    room = limits.context - longest
    max_tokens = _get(body, max_tokens_key, (int,), None, 1)
    if max_tokens is None and max_tokens_key == "max_completion_tokens":
        max_tokens = _get(body, "max_tokens", (int,), None, 1)
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise APIError(400, f"'max_tokens' is {max_tokens}; this server allows at most {limits.max_tokens}",
                       "max_tokens")
    if max_tokens is None:
        max_tokens = min(limits.max_tokens, room)
    if longest + max_tokens > limits.context or room < 1:
        raise APIError(400, f"This model's maximum context length is {limits.context} tokens. However, you "
                       f"requested {longest + max(max_tokens, 1)} tokens ({longest} in the prompt, {max(max_tokens, 1)}"
                       " in the completion). Please reduce the length of the prompt or completion.", "max_tokens")
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=max(top_k, 0),
                            seed=seed, stop=tuple(stop), ignore_eos=ignore_eos, logprobs=logprobs)
    return params, n


def _text_content(content, i: int) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):  # content parts: text only
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"messages[{i}].content: only text parts are supported", "messages")
            parts.append(part["text"])
        return "".join(parts)
    raise APIError(400, f"messages[{i}].content must be a string or a list of text parts", "messages")


def chat_messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise APIError(400, f"messages[{i}] needs a string 'role'", "messages")
        out.append({"role": m["role"], "content": _text_content(m.get("content"), i)})
    return out


def completion_prompts(body: dict, tokenizer, vocab: int) -> list[list[int]]:
    """`prompt`: a string, a list of strings, a list of token ids, or a list of such lists."""
    p = body.get("prompt")
    if isinstance(p, str):
        p = [p]
    if isinstance(p, list) and p and all(isinstance(x, int) and not isinstance(x, bool) for x in p):
        p = [p]
    if not isinstance(p, list) or not p:
        raise APIError(400, "'prompt' must be a string, a list of strings or a list of token-id lists", "prompt")
    out = []
    for i, x in enumerate(p):
        if isinstance(x, str):
            out.append(tokenizer(x)["input_ids"])  # special tokens (BOS) as `kollm generate --raw` adds them
        elif isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x):
            if any(t < 0 or t >= vocab for t in x):
                raise APIError(400, f"prompt[{i}] has token ids outside the vocabulary [0, {vocab})", "prompt")
            out.append(list(x))
        else:
            raise APIError(400, f"prompt[{i}] must be a string or a list of token ids", "prompt")
        if not out[-1]:
            raise APIError(400, f"prompt[{i}] is empty (no tokens)", "prompt")
    return out


# ---- replies -----------------------------------------------------------------------------------
def _token_str(tokenizer, tid: int) -> str:
    if tokenizer is None:  # vLLM's return_tokens_as_token_ids
        return f"token_id:{tid}"
    return tokenizer.decode([tid])


def chat_logprobs(tokenizer, lps) -> dict:
    def item(tid, lp):
        s = _token_str(tokenizer, tid)
        return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}

    return {"content": [{**item(x.token_id, x.logprob), "top_logprobs": [item(t, v) for t, v in x.top]}
                        for x in lps]}


def completion_logprobs(tokenizer, lps, offset: int) -> dict:
    tokens = [_token_str(tokenizer, x.token_id) for x in lps]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    top = [{_token_str(tokenizer, t): v for t, v in x.top} for x in lps]
    return {"tokens": tokens, "token_logprobs": [x.logprob for x in lps], "top_logprobs": top, "text_offset": offsets}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def drain(receive, seconds: float) -> None:
    """Read and discard the rest of a request body we answer without reading (401, 413), for at
    most `seconds`: closing a connection with unread data resets it, and a client still sending
    would get the reset instead of the answer."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            while (await receive()).get("more_body", False):
                pass


class Guard:
    """Plain ASGI middleware (streams and disconnects pass through untouched): the API key on
    every route but /health (the /v1 API and the weight update alike) and the declared body size,
    checked before any route runs."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int, body_timeout: float):
        self.app, self.api_key, self.max_body, self.body_timeout = app, api_key, max_body_bytes, body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            response = None
            if self.api_key and scope["path"] != "/health":
                if headers.get("authorization", "") != f"Bearer {self.api_key}":
                    response = error_response(401, "missing or wrong API key (send 'Authorization: Bearer KEY')")
            length = headers.get("content-length", "")
            if response is None and length.isdigit() and int(length) > self.max_body:
                response = error_response(413, f"request body is {length} bytes; this server accepts at most "
                                          f"{self.max_body}")
            if response is not None:
                if scope["method"] not in ("GET", "HEAD"):
                    await drain(receive, self.body_timeout)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


# ---- the app -----------------------------------------------------------------------------------
def fingerprint(req: GenRequest) -> str | None:
    """The weights that answered (the engine's record): `kollm-weights-V`, V = updates applied."""
    return "+".join(f"kollm-weights-{v}" for v in sorted(req.weights)) or None


def create_app(engine: Engine, tokenizer, model_name: str, limits: Limits, api_key: str | None = None,
               on_startup=None, allow_weight_updates: bool = False, weights_root: str | Path | None = None) -> FastAPI:
    if allow_weight_updates and weights_root is None:
        raise ValueError("weight updates need a weights root: the directories under it are the only ones loaded")
    root = Path(weights_root).resolve() if weights_root is not None else None

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        if on_startup:
            on_startup()
        yield
        engine.stop()

    app = FastAPI(title="kollm serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    vocab = engine.cfg.vocab_size

    app.add_middleware(Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes,
                       body_timeout=limits.body_timeout)

    async def read_json(request: Request) -> dict:
        data, size = bytearray(), 0
        try:
            async with asyncio.timeout(limits.body_timeout):  # a client trickling a body holds a slot
                async for chunk in request.stream():  # chunked bodies have no Content-Length: count here too
                    size += len(chunk)
                    if size <= limits.max_body_bytes:
                        data += chunk  # beyond: read on and discard, then answer 413 (not a reset)
        except TimeoutError:
            if size <= limits.max_body_bytes:
                raise APIError(408, f"request body not received within {limits.body_timeout:g} s") from None
        if size > limits.max_body_bytes:
            raise APIError(413, f"request body exceeds {limits.max_body_bytes} bytes")
        body = parse_body(bytes(data))
        m = body.get("model")
        if m is not None and m != model_name:
            raise APIError(404, f"The model `{m}` does not exist (this server serves `{model_name}`).", "model")
        return body

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return error_response(e.status, e.message, e.param)

    @app.get("/health")
    async def health():
        return {"status": "ok", **engine.stats}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "kollm", "max_model_len": limits.context}]}

    if allow_weight_updates:
        update_lock = asyncio.Lock()

        @app.post("/update_weights_from_disk")
        async def update_weights_from_disk(request: Request):
            def answer(status: int, ok: bool, message: str) -> JSONResponse:
                return JSONResponse({"success": ok, "message": message, "num_paused_requests": 0}, status_code=status)

            try:
                body = await read_json(request)
            except APIError as e:
                return answer(e.status, False, e.message)
            path = body.get("model_path")
            if not isinstance(path, str) or not path:
                return answer(400, False, "'model_path' must be a non-empty string (a checkpoint directory)")
            real = (root / path).resolve()  # an absolute path replaces the root; then it must lead back in
            outside = [] if real.is_relative_to(root) else [real]
            if not outside and real.is_dir():  # a file linked from elsewhere is read from elsewhere
                outside = [f for f in real.iterdir() if not f.resolve().is_relative_to(root)]
            if outside:
                return answer(400, False, f"weights not updated: {path} ({outside[0]}) is outside the weights root "
                              f"{root} (kollm serve --weights-root)")
            path = str(real)
            for key, neutral in (("load_format", ("auto", "safetensors")), ("abort_all_requests", (False,))):
                if body.get(key) is not None and body[key] not in neutral:  # SGLang options kollm lacks
                    return answer(400, False, f"'{key}': {body[key]!r} is not supported by kollm serve")
            async with update_lock:  # one at a time, in arrival order
                status, message = await asyncio.wrap_future(engine.update_weights(path))
            return answer(status, status == 200, message)

    def submit(prompts: list[list[int]], params: SamplingParams, n: int, stream: bool) -> GenRequest:
        req = GenRequest(prompts, params, n, asyncio.get_running_loop(), stream)
        if len(req.seqs) > engine.max_queue:
            raise APIError(400, f"the request asks for {len(req.seqs)} sequences (prompts x n); this server queues "
                           f"at most {engine.max_queue}", "prompt")
        if max(map(len, prompts)) + params.max_tokens > engine.kv_budget:
            raise APIError(400, f"prompt + max_tokens = {max(map(len, prompts)) + params.max_tokens} exceeds this "
                           f"server's KV-cache budget of {engine.kv_budget} tokens", "max_tokens")
        try:
            engine.submit(req)
        except QueueFull as e:
            raise APIError(429, str(e)) from None
        return req

    async def events(req: GenRequest) -> AsyncIterator[Output]:
        """Every Output of the request until all its choices finished; cancels it if the consumer
        stops early (a disconnected client: the streaming task is cancelled)."""
        left = len(req.seqs)
        try:
            while left:
                item = await req.queue.get()
                if isinstance(item, EngineError):
                    raise item
                for out in item:
                    left -= out.finish_reason is not None
                    yield out
        finally:
            if left:
                engine.cancel(req)

    async def collect(request: Request, req: GenRequest) -> list[dict]:
        """Non-streamed: gather each choice's text, ids and logprobs; a disconnect cancels."""
        choices = [{"text": "", "ids": [], "lps": [], "finish": None} for _ in req.seqs]

        async def gather():
            async for out in events(req):
                c = choices[out.index]
                c["text"] += out.text
                c["ids"] += out.token_ids
                c["lps"] += out.logprobs or []
                c["finish"] = out.finish_reason or c["finish"]

        task = asyncio.create_task(gather())
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.5)
                if done:
                    task.result()
                    return choices
                if await request.is_disconnected():
                    task.cancel()
                    engine.cancel(req)
                    raise APIError(499, "client disconnected")
        finally:
            if not task.done():
                task.cancel()
                engine.cancel(req)

    def fail(e: EngineError) -> JSONResponse:
        return error_response(500, str(e))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await read_json(request)
        messages = chat_messages(body)
        try:  # the template has its own BOS: rendered, then tokenised without special tokens
            prompt = render_prompt(tokenizer, messages)
        except Exception as e:  # a template may raise on roles it does not know
            raise APIError(400, f"chat template failed on these messages: {e}", "messages") from None
        if not prompt:
            raise APIError(400, "the chat template rendered an empty prompt", "messages")
        top = None
        if _get(body, "logprobs", (bool,), False):
            top = _get(body, "top_logprobs", (int,), 0, 0, limits.max_logprobs)
        elif body.get("top_logprobs") not in (None, 0):
            raise APIError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
        params, n = sampling_fields(body, limits, [len(prompt)], "max_completion_tokens", top)
        lp_tok = None if _get(body, "return_tokens_as_token_ids", (bool,), False) else tokenizer
        stream = _get(body, "stream", (bool,), False)
        include_usage = stream and bool((body.get("stream_options") or {}).get("include_usage"))
        req = submit([prompt], params, n, stream)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "created": now, "model": model_name}
        if not stream:
            try:
                choices = await collect(request, req)
            except EngineError as e:
                return fail(e)
            return {**head, "object": "chat.completion", "system_fingerprint": fingerprint(req),
                    "choices": [{"index": i, "message": {"role": "assistant", "content": c["text"]},
                                 "logprobs": chat_logprobs(lp_tok, c["lps"]) if top is not None else None,
                                 "finish_reason": c["finish"]} for i, c in enumerate(choices)],
                    "usage": usage(len(prompt), sum(len(c["ids"]) for c in choices))}

        async def gen():
            chunk = {**head, "object": "chat.completion.chunk"}
            for i in range(len(req.seqs)):
                yield sse({**chunk, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                 "logprobs": None, "finish_reason": None}]})
            completion = 0
            try:
                async for out in events(req):
                    completion += len(out.token_ids)
                    if not out.text and out.finish_reason is None and top is None:
                        continue  # nothing released yet (an incomplete character or a possible stop string)
                    yield sse({**chunk, "choices": [{
                        "index": out.index, "delta": {"content": out.text},
                        "logprobs": chat_logprobs(lp_tok, out.logprobs) if top is not None else None,
                        "finish_reason": out.finish_reason}]})
            except EngineError as e:
                yield sse(error_body(500, str(e)))
                return
            if include_usage:
                yield sse({**chunk, "choices": [], "usage": usage(len(prompt), completion)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_json(request)
        prompts = completion_prompts(body, tokenizer, vocab)
        top = _get(body, "logprobs", (int,), None, 0, limits.max_logprobs)
        params, n = sampling_fields(body, limits, [len(p) for p in prompts], "max_tokens", top)
        lp_tok = None if _get(body, "return_tokens_as_token_ids", (bool,), False) else tokenizer
        with_ids = _get(body, "return_token_ids", (bool,), False)
        stream = _get(body, "stream", (bool,), False)
        include_usage = stream and bool((body.get("stream_options") or {}).get("include_usage"))
        req = submit(prompts, params, n, stream)
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        head = {"id": rid, "object": "text_completion", "created": now, "model": model_name}
        prompt_tokens = sum(map(len, prompts))
        if not stream:
            try:
                choices = await collect(request, req)
            except EngineError as e:
                return fail(e)
            return {**head, "system_fingerprint": fingerprint(req), "choices": [{"index": i, "text": c["text"],
                                         "logprobs": completion_logprobs(lp_tok, c["lps"], 0)
                                         if top is not None else None,
                                         "finish_reason": c["finish"], **({"token_ids": c["ids"]} if with_ids else {})}
                                        for i, c in enumerate(choices)],
                    "usage": usage(prompt_tokens, sum(len(c["ids"]) for c in choices))}

        async def gen():
            completion, offsets = 0, [0] * len(req.seqs)
            try:
                async for out in events(req):
                    completion += len(out.token_ids)
                    if not out.text and out.finish_reason is None and top is None and not with_ids:
                        continue
                    lps = None
                    if top is not None:
                        lps = completion_logprobs(lp_tok, out.logprobs, offsets[out.index])
                        offsets[out.index] += sum(map(len, lps["tokens"]))
                    yield sse({**head, "choices": [{"index": out.index, "text": out.text, "logprobs": lps,
                                                    "finish_reason": out.finish_reason,
                                                    **({"token_ids": out.token_ids} if with_ids else {})}]})
            except EngineError as e:
                yield sse(error_body(500, str(e)))
                return
            if include_usage:
                yield sse({**head, "choices": [], "usage": usage(prompt_tokens, completion)})
            yield "data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    return app
