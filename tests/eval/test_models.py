"""Back-ends: kollm's packed log-likelihoods equal transformers' per-pair log-probs, batching
and packing change nothing, the lm-eval tokenization boundary is kept, greedy generation equals
transformers' generate, and the OpenAI-compatible client talks to a real local HTTP server."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from kollm.eval.models import LocalLM, OpenAIEndpoint, load_model, split_pair
from kollm.eval.task import Request

PAIRS = [
    ("전쟁이 시작되었다.  그래서", " 병사들이 집으로 돌아왔다."),
    ("전쟁이 시작되었다.  그래서", " 병사들이 전투에 파견되었다."),
    ("Question: 2+2?\nAnswer:", " 4"),
    ("Question: 2+2?\nAnswer:", " five"),
    ("Question: 2+2?\nAnswer:", " A much longer wrong answer that spans many tokens"),
    ("문장: 만족입니다 긍부정: ", "긍정"),  # trailing space moves into the continuation
    ("", "서울은 대한민국의 수도이다."),  # empty context: BOS prefix
]


def reference(model_dir, lm, pairs):
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for c, x in pairs:
        ctx, cont = lm.encode_pair(c, x)
        with torch.no_grad():
            lp = torch.log_softmax(hf(torch.tensor([ctx + cont])).logits[0].float(), -1)
        rows = lp[len(ctx) - 1: len(ctx) - 1 + len(cont)]
        tgt = torch.tensor(cont)
        out.append((rows.gather(-1, tgt[:, None]).sum().item(), bool((rows.argmax(-1) == tgt).all())))
    return out


@pytest.mark.parametrize("mode", ["packed", "rows"])
def test_loglikelihood_matches_transformers(model_dir, mode):
    lm = LocalLM(model_dir, mode=mode, batch_tokens=256)
    ours = lm.loglikelihood(PAIRS)
    ref = reference(model_dir, lm, PAIRS)
    for (a, ga), (b, gb) in zip(ours, ref):
        assert abs(a - b) < 1e-3 * max(1.0, abs(b)) and abs(a - b) < 5e-3
        assert ga == gb
    assert len({round(a, 3) for a, _ in ours}) == len(PAIRS)  # really different numbers


def test_batching_and_packing_do_not_change_results(model_dir):
    big = LocalLM(model_dir, batch_tokens=100_000).loglikelihood(PAIRS)
    one = LocalLM(model_dir, batch_tokens=1).loglikelihood(PAIRS)  # one unit per batch
    rows = LocalLM(model_dir, mode="rows").loglikelihood(PAIRS)
    for (a, _), (b, _), (c, _) in zip(big, one, rows):
        assert abs(a - b) < 1e-4 and abs(a - c) < 1e-3


def test_greedy_flag_true_for_the_models_own_argmax(model_dir, monkeypatch):
    """is_greedy is True exactly when every continuation token is the model's argmax. The random
    model's argmax tokens are byte fragments that do not survive decode/encode, so the pair is
    given as token ids (encode_pair replaced) rather than as text."""
    lm = LocalLM(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ctx = lm.encode("Question: 2+2?\nAnswer:")
    with torch.no_grad():
        out = hf.generate(torch.tensor([ctx]), attention_mask=torch.ones(1, len(ctx), dtype=torch.long),
                          max_new_tokens=3, do_sample=False)[0, len(ctx):].tolist()
        lp = torch.log_softmax(hf(torch.tensor([ctx + out])).logits[0].float(), -1)
    ref = sum(lp[len(ctx) - 1 + i, t].item() for i, t in enumerate(out))
    not_argmax = [out[0], (out[1] + 1) % len(lm.tokenizer), out[2]]
    for cont, expect in ((out, True), (not_argmax, False)):
        monkeypatch.setattr(lm, "encode_pair", lambda c, x, cont=cont: (ctx, cont))
        (ll, greedy), = lm.loglikelihood([("ctx", "cont")])
        assert greedy is expect
        if expect:
            assert abs(ll - ref) < 1e-4


def test_progress_counts_every_request_on_stderr(model_dir, capsys):
    # A real model on a CPU takes half an hour for a few hundred requests: the bar shows it moving.
    lm = LocalLM(model_dir, batch_tokens=1)  # one unit per batch: the bar advances by a group's requests
    lm.loglikelihood(PAIRS)
    lm.generate([Request("generate", (c,), max_new_tokens=2) for c, _ in PAIRS[:3]])
    err = capsys.readouterr().err
    assert "loglikelihood: 100%" in err and f"{len(PAIRS)}/{len(PAIRS)}" in err
    assert "generate: 100%" in err and "3/3" in err


def test_split_pair_follows_lm_eval():
    assert split_pair("답변: ", "예") == ("답변:", " 예")
    assert split_pair("답변: ", " 예") == ("답변:", "  예")
    assert split_pair("Answer:", " A") == ("Answer:", " A")


def test_context_is_left_truncated_to_max_length(model_dir):
    lm = LocalLM(model_dir, max_length=16)
    long_ctx = "서울은 대한민국의 수도이다. " * 20
    (a, _), = lm.loglikelihood([(long_ctx, " 그래서")])
    ctx, cont = lm.encode_pair(long_ctx, " 그래서")
    ids = ctx[-(16 - len(cont)):] + cont  # the last 16 tokens, as lm-eval keeps them
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        lp = torch.log_softmax(hf(torch.tensor([ids])).logits[0], -1)
    b = sum(lp[16 - len(cont) - 1 + i, t].item() for i, t in enumerate(cont))
    assert abs(a - b) < 1e-3
    assert lm.truncated == {0}  # the harness counts it (results.json truncated_prompts)
    lm.loglikelihood([("서울", " 그래서")])
    assert lm.truncated == set()
    with pytest.raises(ValueError, match="max_length"):
        lm.loglikelihood([("x", " " + "서울은 대한민국의 수도이다." * 5)])


def test_generation_budget_past_the_context_is_capped(model_dir):
    """A CoT/IFEval budget (1,024+ new tokens) on a short-context model: the prompt keeps the last
    half of the context and at most the other half is generated, rather than an empty prompt."""
    lm = LocalLM(model_dir, max_length=32)
    prompt = "서울은 대한민국의 수도이다. " * 20
    out, = lm.generate([Request("generate", (prompt,), stop=(), max_new_tokens=1024)])
    ids = lm.encode(prompt)[-16:]
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    x = torch.tensor([ids])
    ref = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16, do_sample=False,
                      eos_token_id=lm.tokenizer.eos_token_id)[0, len(ids):].tolist()
    assert out == lm.tokenizer.decode(ref, skip_special_tokens=True)


def test_generate_equals_transformers_greedy_and_cuts_at_stop(model_dir, local_lm):
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = ["Question: How many apples?\nAnswer:", "서울은 대한민국의"]
    outs = local_lm.generate([Request("generate", (p,), max_new_tokens=8) for p in prompts])
    for p, o in zip(prompts, outs):
        ids = local_lm.encode(p)
        ref = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()
        assert o == local_lm.tokenizer.decode(ref, skip_special_tokens=True)
    stop = outs[0][2:4]
    assert stop and local_lm.generate([Request("generate", (prompts[0],), stop=(stop,), max_new_tokens=8)])[0] \
        == outs[0][: outs[0].find(stop)]


def _tree_nodes(seqs):
    """Distinct non-empty prefixes: the tokens a prefix tree over `seqs` runs."""
    return len({tuple(s[:n]) for s in seqs for n in range(1, len(s) + 1)})


def test_packed_row_runs_a_prefix_once_and_each_continuation_but_its_last_token(model_dir):
    """The body runs each distinct prefix of context + continuation[:-1] once per item (the context
    once for all choices, choices' shared first tokens once; a continuation's last token predicts
    nothing scored), and the log-likelihoods still equal transformers'."""
    lm = LocalLM(model_dir, batch_tokens=1)  # one row per forward
    run = []
    hidden = lm._hidden
    lm._hidden = lambda ids, pos, mask: (run.append(ids.shape[1]), hidden(ids, pos, mask))[1]
    pairs = PAIRS[:5]
    ours = lm.loglikelihood(pairs)
    enc = [lm.encode_pair(c, x) for c, x in pairs]
    seqs = [c + x[:-1] for c, x in enc]
    want = sorted([_tree_nodes(seqs[:2]), _tree_nodes(seqs[2:5])], reverse=True)
    assert want[0] < len(enc[0][0]) + len(enc[0][1]) + len(enc[1][1]) - 2  # " 병사들이" is shared
    assert run == want
    for (a, ga), (b, gb) in zip(ours, reference(model_dir, lm, pairs)):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(b)) and ga == gb


def test_requests_sharing_a_long_prefix_run_it_once_in_one_row(model_dir):
    """Few-shot examples shared by several items (MMLU's first-n shots), or XWinograd's options in
    the middle of one sentence: requests with different contexts but a long common prefix are run
    as one prefix tree in one row, and each still gets transformers' log-likelihood."""
    shots = "서울은 대한민국의 수도이다. 부산은 항구 도시이다. 제주도는 섬이다. " * 3
    pairs = [(shots + "질문: 한국의 수도는?", " 서울"), (shots + "질문: 한국의 수도는?", " 부산"),
             (shots + "질문: 섬은?", " 제주도"), (shots + "질문: 항구는?", " 부산")]
    lm = LocalLM(model_dir)
    run = []
    hidden = lm._hidden
    lm._hidden = lambda ids, pos, mask: (run.append(ids.shape), hidden(ids, pos, mask))[1]
    ours = lm.loglikelihood(pairs)
    enc = [lm.encode_pair(c, x) for c, x in pairs]
    assert run == [(1, _tree_nodes([c + x[:-1] for c, x in enc]))]
    assert run[0][1] < sum(len(c) for c, _ in enc) / 2  # the shots ran once, not once per item
    for (a, ga), (b, gb) in zip(ours, reference(model_dir, lm, pairs)):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(b)) and ga == gb


def test_generation_runs_continuously_batched_as_each_prompt_alone(model_dir, monkeypatch):
    """Generation goes through the serve engine: with 2 rows for 6 prompts of different lengths,
    budgets and stops, a finished row's place is taken mid-run (more prefills than a static
    batching's 3), longest prompt first, and every answer is the prompt's answer alone."""
    from kollm.serve.engine import Engine

    prompts = ["Question: How many apples?\nAnswer:", "서울은 대한민국의", "한국어와 영어를 함께 배우는 언어 모델입니다. 질문:",
               "The following are", "1", "Question: 2+2?\nAnswer: 4 #### 4\n\nQuestion: 3?\nAnswer:"]
    reqs = [Request("generate", (p,), stop=("#",) if i % 2 else (), max_new_tokens=3 + 4 * (i % 3))
            for i, p in enumerate(prompts)]
    lm = LocalLM(model_dir, gen_rows=2)
    seen = []
    run = Engine.run
    monkeypatch.setattr(Engine, "run", lambda self, rs, **kw: (seen.append((self, rs)), run(self, rs, **kw))[1])
    outs = lm.generate(reqs)
    engine, queued = seen[0]
    assert engine.stats["peak_running"] == 2 and engine.stats["prefills"] > 3
    lens = [len(r.seqs[0].prompt) for r in queued]
    assert lens == sorted(lens, reverse=True) and len(set(lens)) > 3
    alone = [LocalLM(model_dir, gen_rows=1).generate([r])[0] for r in reqs]
    assert outs == alone and any(outs)


def _reply(call):
    if call.path == "/v1/chat/completions":
        return "echo: " + call.body["messages"][0]["content"] + " STOP tail"
    if call.path == "/v1/completions":
        return {"choices": [{"text": call.body["prompt"][::-1]}]}
    return 404, b"no such route"


@pytest.fixture()
def server(openai_stub):
    return openai_stub(_reply)


def test_openai_endpoint_chat_and_completions(server):
    ep = load_model(server.root, endpoint_model="m1")
    assert isinstance(ep, OpenAIEndpoint)
    ep.api_key = "k"
    reqs = [Request("generate", ("안녕",), stop=("STOP",), max_new_tokens=7, chat=True),
            Request("generate", ("abc",), max_new_tokens=3)]
    assert ep.generate(reqs) == ["echo: 안녕 ", "cba"]
    by_path = {c.path: (c.body, c.headers.get("Authorization")) for c in server.calls}
    chat, auth = by_path["/v1/chat/completions"]
    assert chat["model"] == "m1" and chat["temperature"] == 0.0 and chat["max_tokens"] == 7
    assert chat["stop"] == ["STOP"] and auth == "Bearer k"
    assert by_path["/v1/completions"][0]["prompt"] == "abc"
    with pytest.raises(ValueError, match="generation tasks only"):
        ep.loglikelihood([("a", " b")])


def test_openai_endpoint_http_error_is_one_line(server):
    ep = OpenAIEndpoint(server.root + "/v1/x", model="m")  # a wrong base path → 404
    with pytest.raises(ValueError, match="HTTP 404"):
        ep.generate([Request("generate", ("q",), chat=True)])


def test_load_model_rejects_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        load_model(str(tmp_path / "nope"))
