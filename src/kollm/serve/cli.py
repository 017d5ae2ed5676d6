"""`kollm serve --model DIR`: an OpenAI-compatible HTTP server over kollm's batched KV-cache decoder.

Loads a Hugging Face checkpoint directory (kollm's loader: Llama, Qwen2, Gemma 2 sandwich) and its
tokenizer (`kollm.data.chat.load_tokenizer`: kollm's default chat template where it has none),
starts the model thread (`engine.py`) and serves `app.py` with uvicorn. Binds 127.0.0.1
unless `--host` says otherwise; `--api-key` (or $KOLLM_API_KEY) makes every route but /health require
`Authorization: Bearer KEY`. `--allow-weight-updates --weights-root DIR` adds SGLang's `POST
/update_weights_from_disk` (GRPO's weight sync: kollm.train.grpo) for checkpoint directories under
DIR only; off by default since it loads files from this machine's disk; the API key guards it too.
Once listening it prints one line, `kollm serve: listening on URL`, on stdout (`--port 0` picks a
free port; `kollm.serve.testing` reads the line).

Connections are bounded as a reverse proxy would bound them: at most `--max-connections` open
(uvicorn's limit_concurrency: 503 beyond), request headers complete within `--header-timeout`
seconds of the connection opening or of the previous reply (uvicorn has no such timeout: a
client that sends half its headers held its connection forever; `HeaderTimeout` below closes
it), a body complete within `--body-timeout` (408), idle keep-alive connections closed after 5 s
(uvicorn's default).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

import torch

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_kv_budget(model, device: torch.device, context: int, max_batch: int) -> int:
    """KV-cache budget in tokens: half the free GPU memory after loading (CUDA), else 4 GiB, and
    never more than max_batch full contexts."""
    cfg = model.config
    per_token = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * next(model.parameters()).element_size()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free // 2
    else:
        budget = 4 << 30
    return max(context, min(max_batch * context, budget // per_token))


def header_timeout_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol with a deadline on request headers (as nginx's
    client_header_timeout): armed when the connection opens and when the first bytes of a later
    request arrive, disarmed once h11 has parsed the request line and headers (an idle keep-alive
    connection is left to uvicorn's keep-alive timeout); on expiry the connection is closed (no
    request to answer yet)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeout(H11Protocol):
        header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            if self.header_timer is None:
                self.header_timer = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _expired(self) -> None:
            self.header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # headers still incomplete

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0] and not self.transport.is_closing():
                self._arm()  # part of a request's headers came: the rest must follow in time
            else:
                self._disarm()  # headers complete, or an idle keep-alive connection (uvicorn's own timer)

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeout


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kollm serve", description="OpenAI-compatible server (/v1/chat/completions, "
                                "/v1/completions, /v1/models, /health) with continuous batching.")
    p.add_argument("--model", required=True, help="Hugging Face checkpoint directory (config.json, safetensors, "
                   "tokenizer)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--api-key", default=os.environ.get("KOLLM_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every route but /health (default $KOLLM_API_KEY)")
    p.add_argument("--allow-weight-updates", action="store_true",
                   help="serve POST /update_weights_from_disk {\"model_path\": DIR} (SGLang's API): load DIR's weights "
                   "in place between steps (GRPO's weight sync); off by default: it reads the server's disk. Needs "
                   "--weights-root")
    p.add_argument("--weights-root", default=None, help="the only directory whose subdirectories a weight update may "
                   "load (real paths: .. and symlinks cannot leave it); for GRPO, its output_dir or a parent")
    p.add_argument("--max-connections", type=int, default=512, help="open connections (and running requests) "
                   "before new requests get 503")
    p.add_argument("--header-timeout", type=float, default=10.0, help="seconds a connection may take to send a "
                   "request's headers (then closed)")
    p.add_argument("--body-timeout", type=float, default=60.0, help="seconds to receive a request body (then 408)")
    p.add_argument("--served-model-name", default=None, help="the model id clients send (default: --model as given)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="auto", help="auto: the checkpoint's dtype")
    p.add_argument("--max-batch", type=int, default=64, help="most sequences decoded together")
    p.add_argument("--kv-budget-tokens", type=int, default=None,
                   help="KV-cache budget: rows x longest (prompt + max_tokens) (default: from free memory)")
    p.add_argument("--max-prefill-tokens", type=int, default=8192, help="padded tokens per prefill batch")
    p.add_argument("--max-tokens", type=int, default=None, help="largest max_tokens a request may ask for "
                   "(default: the context length)")
    p.add_argument("--max-n", type=int, default=16, help="largest n (choices per request)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (413 above it)")
    p.add_argument("--max-queue", type=int, default=4096, help="waiting sequences before 429")
    p.add_argument("--seed", type=int, default=None, help="seed of the generator shared by unseeded requests")
    p.add_argument("--compile", action="store_true", help="compile the decode step (inductor, dynamic shapes, no "
                   "CUDA graphs: the batch changes shape as requests join and leave; first steps pay the compile)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    args = p.parse_args(argv)
    for name in ("max_batch", "max_prefill_tokens", "max_n", "max_body_bytes", "max_queue", "max_connections"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("header_timeout", "body_timeout"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if args.allow_weight_updates and not args.weights_root:
        p.error("--allow-weight-updates needs --weights-root DIR: a weight update loads only directories under it")
    if args.weights_root and not Path(args.weights_root).is_dir():
        p.error(f"--weights-root {args.weights_root}: no such directory")

    # after the arguments are checked: a bad flag or --help answers without loading torch and the server
    import uvicorn

    from kollm.data.chat import load_tokenizer, stop_token_ids
    from kollm.model.hf import TOKENIZER_FILES, load_hf
    from kollm.serve.app import Limits, create_app
    from kollm.serve.engine import Engine

    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: no such model directory")
    if not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(f"{model_dir}: no tokenizer files (tokenizer.json, tokenizer_config.json, ...)")
    tokenizer = load_tokenizer(model_dir)  # kollm's default chat template where the tokenizer has none
    model = load_hf(model_dir, device=args.device, dtype=DTYPES[args.dtype])
    context = model.config.max_seq_len
    stop_ids = stop_token_ids(tokenizer, model_dir)  # the same as `kollm generate`'s
    device = next(model.parameters()).device
    budget = args.kv_budget_tokens or default_kv_budget(model, device, context, args.max_batch)
    import copy

    # The model thread decodes with its own tokenizer copy; the HTTP side encodes with this one.
    engine = Engine(model, copy.deepcopy(tokenizer), stop_ids, max_batch=args.max_batch, kv_budget_tokens=budget,
                    max_prefill_tokens=args.max_prefill_tokens, max_queue=args.max_queue, seed=args.seed,
                    compile=args.compile, weights_path=str(model_dir))
    limits = Limits(context=context, max_tokens=min(args.max_tokens or context, context), max_n=args.max_n,
                    max_body_bytes=args.max_body_bytes, body_timeout=args.body_timeout)
    name = args.served_model_name or args.model

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        raise ValueError(f"cannot bind {args.host}:{args.port}: {e.strerror}") from None
    port = sock.getsockname()[1]
    url = f"http://{args.host if family == socket.AF_INET else f'[{args.host}]'}:{port}"
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"kollm serve: warning: listening on {args.host} without --api-key", file=sys.stderr)

    def ready() -> None:
        print(f"kollm serve: listening on {url} (model `{name}`, {device}, context {context}, "
              f"KV budget {budget} tokens)", flush=True)

    app = create_app(engine, tokenizer, name, limits, api_key=args.api_key, on_startup=ready,
                     allow_weight_updates=args.allow_weight_updates, weights_root=args.weights_root)
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5,
                            http=header_timeout_protocol(args.header_timeout), limit_concurrency=args.max_connections)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
