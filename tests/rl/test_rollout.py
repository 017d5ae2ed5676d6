"""Rollout engines: in process, G samples per prompt are kollm's batched generation of the repeated
prompts under one seed; through an OpenAI-compatible server (a stub here), one `/v1/completions`
request per prompt with `n = G`, the prompt as token ids, the sampled ids taken as returned (or
re-tokenised), the stop token restored; padding puts completions after their prompts."""

from __future__ import annotations

import pytest
import torch

from kollm.model.config import get_preset
from kollm.model.generate import GenerationConfig, generate
from kollm.model.transformer import build_model
from kollm.rl.rollout import LocalRollout, ServerRollout, pad_rollouts


def test_local_rollout_is_batched_generation_of_repeated_prompts():
    torch.manual_seed(0)
    model = build_model(get_preset("tiny"))
    cfg = GenerationConfig(max_new_tokens=5, do_sample=True, temperature=1.0, stop_token_ids=[7])
    prompts = [[1, 2, 3], [4, 5]]
    out = LocalRollout(model, cfg).sample(prompts, 3, seed=11)
    assert [len(g) for g in out] == [3, 3]
    ref = generate(model, [prompts[0]] * 3 + [prompts[1]] * 3, GenerationConfig(**{**cfg.__dict__, "seed": 11}))
    assert out[0] + out[1] == ref
    assert LocalRollout(model, cfg).sample(prompts, 3, seed=11) == out  # the seed fixes the samples
    assert LocalRollout(model, cfg).sample(prompts, 3, seed=12) != out


class _Tok:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


@pytest.fixture
def server(openai_stub):
    def reply(call):
        p = call.body["prompt"]
        # sample j of a prompt: its last id + j, as ids (vLLM's return_token_ids) for even
        # prompts and as text only for odd ones; the first sample stops on EOS, the rest on length
        choices = []
        for j in range(call.body["n"]):
            ids = [p[-1] + j, 65 + j]
            ch = {"index": j, "text": "".join(map(chr, ids)), "finish_reason": "stop" if j == 0 else "length"}
            if p[0] % 2 == 0:
                ch["token_ids"] = ids
            choices.append(ch)
        return {"choices": choices[::-1]}  # out of order: sorted by index

    return openai_stub(reply)


def test_server_rollout_requests_and_parses(server):
    cfg = GenerationConfig(max_new_tokens=8, do_sample=True, temperature=0.7, top_p=0.9, top_k=5, stop_token_ids=[2])
    out = ServerRollout(server.root, _Tok(), cfg, model="policy").sample([[2, 70], [3, 80]], 3, seed=100)
    assert out == [[[70, 65, 2], [71, 66], [72, 67]],      # ids as returned; EOS restored after a stop
                   [[80, 65, 2], [81, 66], [82, 67]]]      # re-tokenised text (ord) gives the same ids
    reqs = sorted(({"path": c.path, **c.body} for c in server.calls), key=lambda r: r["prompt"])
    assert all(r["path"] == "/v1/completions" for r in reqs)
    assert [r["prompt"] for r in reqs] == [[2, 70], [3, 80]]
    assert [r["seed"] for r in reqs] == [100, 101]
    r = reqs[0]
    assert (r["model"], r["n"], r["max_tokens"], r["temperature"], r["top_p"], r["top_k"], r["stop_token_ids"]) == \
        ("policy", 3, 8, 0.7, 0.9, 5, [2])


def test_server_rollout_unreachable_is_one_clear_error():
    cfg = GenerationConfig(max_new_tokens=2, do_sample=True)
    with pytest.raises(ValueError, match="cannot reach the rollout server"):
        ServerRollout("http://127.0.0.1:9", _Tok(), cfg, timeout=2).sample([[1]], 2, seed=0)


def test_pad_rollouts_right_pads_and_masks_completions():
    ids, mask = pad_rollouts([[5, 6], [7]], [[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[5, 6, 1, 2, 3], [7, 4, 0, 0, 0]]
    assert mask.tolist() == [[0, 0, 1, 1, 1], [0, 1, 0, 0, 0]]
