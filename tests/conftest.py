"""Fixtures shared across test packages: a tiny random Llama checkpoint (`write_tiny_llama`) and a
stub OpenAI-compatible server (`openai_stub`)."""

import json
import os
import sys
import threading
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

# ---- parity tests must not skip in CI ------------------------------------------------------------
# The parity tests importorskip their peer (trl, lm_eval, mergekit, ...): on a developer's machine a
# missing peer is a skip, but under CI=true (what CI services set) it is a failure, so a green CI
# run means every parity test ran. Patched here, before any test module is imported.
_importorskip = pytest.importorskip


def _importorfail(modname: str, *args, **kwargs):
    try:
        return _importorskip(modname, *args, **kwargs)
    except pytest.skip.Exception as e:
        pytest.fail(f"CI=true: {e.msg} (parity tests must not skip in CI: install the test,bench extras)",
                    pytrace=False)


if os.environ.get("CI", "").lower() == "true":
    pytest.importorskip = _importorfail


def _write_tiny_llama(out: Path, texts: list[str], specials: list[str], vocab_size: int, hidden: int,
                      max_positions: int, init_std: float, chat_template: str | None = None,
                      bos_prefix: bool = False) -> Path:
    """A tiny random Llama checkpoint in Hugging Face layout, written by `transformers` itself, with a
    byte-level BPE trained on `texts` (specials first: <pad>=0, <s>=1, </s>=2). Weights are drawn
    wider than HF's init so logits are peaked: no near-ties in argmax, varied log-likelihoods."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    if bos_prefix:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        chat_template=chat_template)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, init_std)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def write_tiny_llama():
    return _write_tiny_llama


# ---- a stub OpenAI-compatible server -------------------------------------------------------------
@dataclass
class StubCall:
    """One request the stub received: its path, its JSON body and its headers."""

    path: str
    body: dict
    headers: Message


class _QuietOnHangup(ThreadingHTTPServer):
    """A client that hung up (a timeout, a cancelled stream) is not an error of the stub: without
    this, socketserver prints the BrokenPipeError from a request thread that outlives its test, into
    whichever test holds stderr then (seen in a randomly ordered run: another test's capsys caught it)."""

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class OpenAIStub:
    """A stub OpenAI-compatible server on 127.0.0.1 and a free port (stdlib ThreadingHTTPServer, one
    thread per request), playing a judge, a chat model or a rollout server in tests. Every POST's JSON
    body goes to `reply(call)`, which returns a str (a chat completion with that reply), a dict (JSON,
    HTTP 200) or (status, JSON dict | bytes | None[, headers]). `calls` holds the requests in arrival
    order; `max_in_flight` the most requests inside `reply` at once (a request leaves the count before
    its answer is sent: a client that has its answer may send the next one without overlapping it)."""

    def __init__(self, reply):
        self.reply = reply
        self.calls: list[StubCall] = []
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                call = StubCall(self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"]))),
                                self.headers)
                with stub.lock:
                    stub.calls.append(call)
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    out = stub.reply(call)
                finally:
                    with stub.lock:
                        stub.in_flight -= 1
                if isinstance(out, str):
                    out = {"choices": [{"message": {"role": "assistant", "content": out}}]}
                status, payload, headers = (200, out, {}) if isinstance(out, dict) else (*out, {})[:3]
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if payload is None:  # status (and headers) only
                    self.end_headers()
                    return
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                if not isinstance(payload, bytes):
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = _QuietOnHangup(("127.0.0.1", 0), Handler)
        self.root = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = self.root + "/v1"  # what OpenAI clients take as base_url
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def openai_stub():
    """`openai_stub(reply)` starts an OpenAIStub; every one started is shut down after the test."""
    started: list[OpenAIStub] = []

    def start(reply) -> OpenAIStub:
        started.append(OpenAIStub(reply))
        return started[-1]

    yield start
    for stub in started:
        stub.close()
