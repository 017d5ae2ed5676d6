"""`kollm serve` as a real process: the official `openai` client against it; greedy output equal to
kollm's `generate` (itself equal to transformers'); 16 concurrent requests equal to each alone;
seeded sampling independent of batch-mates; stop strings; logprobs against transformers; limits
answered with 4xx; a client that disconnects frees its slot."""

import http.client
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import openai
import pytest
import torch

from kollm.model.generate import GenerationConfig, generate, generate_text
from kollm.model.hf import load_hf

from .conftest import API_KEY, MAX_BODY, MAX_N, MAX_TOKENS

EOS = 2
IDS = {"return_tokens_as_token_ids": True}


@pytest.fixture(scope="module")
def model(serve_model_dir):
    return load_hf(serve_model_dir)


@pytest.fixture(scope="module")
def tokenizer(serve_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(serve_model_dir)


def post(server, route, body, key=API_KEY, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(server.url + route, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def token_ids(choice) -> list[int]:
    return [int(t.split(":")[1]) for t in choice.logprobs.tokens]


def complete(client, server, prompt, **kw):
    return client.completions.create(model=server.model, prompt=prompt, logprobs=0, extra_body=IDS, **kw)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list()] == [server.model]
    h = server.health()
    assert h["status"] == "ok" and h["running"] == 0


@pytest.mark.parametrize("prompt", [[1, 50, 60, 70], [1, 9], [1, 200, 201, 202, 203, 204, 205, 206, 207, 208]])
def test_greedy_completion_equals_kollm_generate(server, client, model, tokenizer, prompt):
    r = complete(client, server, prompt, max_tokens=24, temperature=0)
    want = generate(model, [prompt], GenerationConfig(max_new_tokens=24, stop_token_ids=[EOS]))[0]
    c = r.choices[0]
    assert token_ids(c) == want
    assert c.text == tokenizer.decode(want, skip_special_tokens=True)
    assert c.finish_reason == ("stop" if want[-1] == EOS else "length")
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (
        len(prompt), len(want), len(prompt) + len(want))


def test_chat_equals_generate_text_with_the_chat_template(server, client, model, tokenizer):
    cfg = GenerationConfig(max_new_tokens=20, stop_token_ids=[EOS])
    for q in ["서울은 대한민국의", "The quick brown"]:
        [(want, ids)] = generate_text(model, tokenizer, [q], cfg, chat=True)
        r = client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": q}],
                                           max_tokens=20, temperature=0)
        assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                 add_generation_prompt=True)
        assert r.usage.prompt_tokens == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        assert r.usage.completion_tokens == len(ids)


def test_streaming_equals_non_streaming(server, client, tokenizer):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Language models"}]
    kw = dict(model=server.model, messages=msgs, max_tokens=30, temperature=0.8, seed=7, n=2)
    full = client.chat.completions.create(**kw)
    text, finish, roles = ["", ""], [None, None], [0, 0]
    usage = None
    for chunk in client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        assert chunk.object == "chat.completion.chunk" and chunk.model == server.model
        if not chunk.choices:
            usage = chunk.usage
            continue
        ch = chunk.choices[0]
        roles[ch.index] += ch.delta.role == "assistant"
        text[ch.index] += ch.delta.content or ""
        finish[ch.index] = ch.finish_reason or finish[ch.index]
    assert roles == [1, 1]
    assert text == [c.message.content for c in full.choices]
    assert finish == [c.finish_reason for c in full.choices]
    assert usage.model_dump() == full.usage.model_dump()

    pieces = ["", ""]
    for chunk in client.completions.create(model=server.model, prompt=["Seoul", "The lazy"], max_tokens=12,
                                           temperature=0, stream=True):
        pieces[chunk.choices[0].index] += chunk.choices[0].text
    full = client.completions.create(model=server.model, prompt=["Seoul", "The lazy"], max_tokens=12, temperature=0)
    assert pieces == [c.text for c in full.choices]
    assert full.usage.prompt_tokens == sum(len(tokenizer(p)["input_ids"]) for p in ["Seoul", "The lazy"])


def test_sixteen_concurrent_greedy_requests_equal_each_alone(server, client):
    words = "서울은 대한민국의 수도이다 The quick brown fox jumps over the lazy dog 언어 모델".split()
    reqs = [(" ".join(words[i % 5:i % 5 + 1 + i % 7]), 6 + 5 * (i % 6)) for i in range(16)]

    def one(rq):
        r = complete(client, server, rq[0], max_tokens=rq[1], temperature=0, extra_headers={})
        return r.choices[0].text, token_ids(r.choices[0])

    alone = [one(rq) for rq in reqs]
    before = server.health()
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(one, reqs))
    after = server.health()
    assert together == alone
    steps, rows = after["steps"] - before["steps"], after["row_steps"] - before["row_steps"]
    assert rows / steps > 2, (rows, steps)  # they were decoded together, not one by one


def test_seeded_sampling_is_reproducible_whatever_the_batch_mates(server, client, model):
    prompt, kw = [1, 40, 41, 42], dict(max_tokens=20, temperature=0.9, top_p=0.9)
    alone = complete(client, server, prompt, seed=1234, n=2, **kw)
    with ThreadPoolExecutor(9) as pool:
        noise = [pool.submit(complete, client, server, [1, 7 + i], max_tokens=25, temperature=1.0) for i in range(8)]
        mates = pool.submit(complete, client, server, prompt, seed=1234, n=2, **kw).result()
        [f.result() for f in noise]
    assert [token_ids(c) for c in mates.choices] == [token_ids(c) for c in alone.choices]
    # choice 0 draws with a generator seeded `seed`, as `kollm generate --seed` does; choice i with seed + i
    cfg = GenerationConfig(max_new_tokens=20, do_sample=True, temperature=0.9, top_p=0.9, seed=1234,
                           stop_token_ids=[EOS])
    assert token_ids(alone.choices[0]) == generate(model, [prompt], cfg)[0]
    assert token_ids(alone.choices[1]) == token_ids(complete(client, server, prompt, seed=1235, **kw).choices[0])
    assert token_ids(alone.choices[0]) != token_ids(alone.choices[1])


def test_stop_strings_cut_the_text_streamed_or_not(server, client):
    kw = dict(model=server.model, prompt="The quick brown", max_tokens=40, temperature=0,
              extra_body={"ignore_eos": True})
    text = client.completions.create(**kw).choices[0].text
    start = next(i for i in range(3, len(text) - 2) if "\ufffd" not in text[i:i + 2])
    stop = text[start:start + 2]
    want = text[:text.find(stop)]
    r = client.completions.create(**kw, stop=[stop, "never-appears"])
    assert (r.choices[0].text, r.choices[0].finish_reason) == (want, "stop")
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stop=stop, stream=True))
    assert streamed == want


def test_chat_logprobs_equal_transformers(server, client, serve_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    msgs = [{"role": "user", "content": "한국어와 영어"}]
    r = client.chat.completions.create(model=server.model, messages=msgs, max_tokens=8, temperature=0,
                                       logprobs=True, top_logprobs=3, extra_body=IDS)
    items = r.choices[0].logprobs.content
    gen = [int(x.token.split(":")[1]) for x in items]
    prompt = tokenizer(tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"]
    hf = AutoModelForCausalLM.from_pretrained(serve_model_dir).eval()
    with torch.no_grad():
        lp = hf(torch.tensor([prompt + gen])).logits[0, len(prompt) - 1:-1].float().log_softmax(-1)
    for j, x in enumerate(items):
        assert x.logprob == pytest.approx(lp[j, gen[j]].item(), abs=1e-4)
        top_v, top_i = lp[j].topk(3)
        assert [int(t.token.split(":")[1]) for t in x.top_logprobs] == top_i.tolist()
        assert [t.logprob for t in x.top_logprobs] == pytest.approx(top_v.tolist(), abs=1e-4)
        assert gen[j] == top_i[0]  # greedy picks the most likely token


def test_limits_answer_4xx_with_a_message(server, client):
    m = server.model
    ok = {"model": m, "prompt": "x", "max_tokens": 2}
    assert post(server, "/v1/completions", ok)[0] == 200
    cases = [
        (ok, None, 401, "API key"),
        (ok, "wrong", 401, "API key"),
        ({**ok, "n": MAX_N + 1}, API_KEY, 400, "'n'"),
        ({**ok, "max_tokens": MAX_TOKENS + 1}, API_KEY, 400, "at most"),
        ({**ok, "prompt": [1] * 6000, "max_tokens": 3000}, API_KEY, 400, "maximum context length is 8192"),
        ({**ok, "prompt": [1] * 8192}, API_KEY, 400, "maximum context length"),
        ({**ok, "temperature": 3}, API_KEY, 400, "'temperature'"),
        ({**ok, "top_p": 0}, API_KEY, 400, "'top_p'"),
        ({**ok, "presence_penalty": 0.5}, API_KEY, 400, "not supported"),
        ({**ok, "logprobs": 21}, API_KEY, 400, "'logprobs'"),
        ({**ok, "prompt": [1, 999]}, API_KEY, 400, "vocabulary"),
        ({**ok, "model": "other"}, API_KEY, 404, "does not exist"),
        ({**ok, "prompt": "x" * (MAX_BODY + 10)}, API_KEY, 413, "bytes"),
    ]
    for body, key, status, fragment in cases:
        got, err = post(server, "/v1/completions", body, key=key)
        assert (got, err["error"]["code"]) == (status, status), body
        assert fragment in err["error"]["message"], err
    assert post(server, "/v1/chat/completions", {"model": m, "messages": []})[0] == 400
    img = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    assert "text parts" in post(server, "/v1/chat/completions", {"model": m, "messages": img})[1]["error"]["message"]
    assert post(server, "/v1/completions", None, raw=b"{not json")[0] == 400
    # a chunked body has no Content-Length: counted while read
    u = urlparse(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    big = json.dumps({**ok, "prompt": "y" * (MAX_BODY + 10)}).encode()
    conn.request("POST", "/v1/completions", body=iter([big[i:i + 65536] for i in range(0, len(big), 65536)]),
                 headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
                 encode_chunked=True)
    assert conn.getresponse().status == 413
    conn.close()
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.completions.create(model=m, prompt=[1] * 8000, max_tokens=500)
    assert urllib.request.urlopen(server.url + "/health").status == 200  # no key needed there


def _send(server, body) -> http.client.HTTPConnection:
    u = urlparse(server.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("POST", "/v1/completions", body=json.dumps(body),
                 headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    return conn


def _wait_idle(server, timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while (h := server.health())["running"] or h["waiting"]:
        assert time.monotonic() < deadline, h
        time.sleep(0.05)
    return h


def test_a_client_that_disconnects_frees_its_slot(server):
    before = _wait_idle(server)
    body = {"model": server.model, "prompt": "The quick", "max_tokens": MAX_TOKENS, "ignore_eos": True,
            "temperature": 0}
    conn = _send(server, {**body, "stream": True})
    resp = conn.getresponse()
    assert resp.status == 200
    for _ in range(3):  # a few events arrive, then the client goes away
        assert resp.readline().startswith(b"data: ")
        resp.readline()
    conn.sock.close()
    conn.close()
    after = _wait_idle(server)
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["generated_tokens"] - before["generated_tokens"] < MAX_TOKENS

    conn = _send(server, body)  # non-streamed: the disconnect is noticed while the reply is awaited
    deadline = time.monotonic() + 60
    while server.health()["running"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    conn.sock.close()
    after2 = _wait_idle(server)
    assert after2["cancelled"] == after["cancelled"] + 1
    assert after2["generated_tokens"] - after["generated_tokens"] < MAX_TOKENS
