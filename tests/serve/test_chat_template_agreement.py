"""`kollm generate` (chat mode, its default) and `kollm serve`'s /v1/chat/completions give the same
greedy reply to the same prompt, for a model with a chat template and for one without: both render
with the tokenizer's template, or kollm's default (kollm.data.chat.DEFAULT_CHAT_TEMPLATE, the one
`kollm sft` trains such a model with) where it has none, and stop on the same ids; `kollm eval`'s
chat requests render and stop the same way."""

import json

import pytest

from kollm.data.chat import DEFAULT_CHAT_TEMPLATE
from kollm.model import generate as generate_cli
from kollm.serve.testing import running_server

from .conftest import CHAT, TEXT

SPECIALS = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
PROMPTS = ["서울은 대한민국의", "The quick brown"]


@pytest.mark.slow
@pytest.mark.parametrize("template", [CHAT, None], ids=["own-template", "no-template"])
def test_generate_and_serve_chat_agree(tmp_path, write_tiny_llama, capsys, template):
    from openai import OpenAI
    from transformers import AutoTokenizer

    d = write_tiny_llama(tmp_path / "m", TEXT, SPECIALS, vocab_size=400, hidden=48, max_positions=512,
                         init_std=0.2, chat_template=template, bos_prefix=True)
    tok = AutoTokenizer.from_pretrained(d)
    assert bool(tok.chat_template) == (template is not None)
    expected_template = template or DEFAULT_CHAT_TEMPLATE
    replies = []
    for q in PROMPTS:
        assert generate_cli.main(["--model", str(d), "--prompt", q, "--greedy", "--max-new-tokens", "24",
                                  "--device", "cpu", "--json"]) == 0
        replies.append(json.loads(capsys.readouterr().out))
    with running_server(d, "--seed", "0") as server:
        client = OpenAI(base_url=server.base_url, api_key="none", max_retries=0, timeout=120)
        for q, want in zip(PROMPTS, replies):
            r = client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": q}],
                                               max_tokens=24, temperature=0)
            assert r.choices[0].message.content == want["completion"]
            assert r.usage.completion_tokens == len(want["token_ids"])
            # both rendered the same template: the tokenizer's own, or kollm's documented default
            rendered = tok.apply_chat_template([{"role": "user", "content": q}], chat_template=expected_template,
                                               tokenize=False, add_generation_prompt=True)
            assert r.usage.prompt_tokens == len(tok(rendered, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("template", [CHAT, None], ids=["own-template", "no-template"])
def test_eval_chat_requests_agree_with_generate(tmp_path, write_tiny_llama, capsys, template):
    # `kollm eval`'s chat=true requests render the prompt as `kollm generate` and `kollm serve` do: the
    # model's template, or kollm's default where it has none (eval sent the raw prompt there before).
    from kollm.eval.models import LocalLM
    from kollm.eval.task import Request

    d = write_tiny_llama(tmp_path / "m", TEXT, SPECIALS, vocab_size=400, hidden=48, max_positions=512,
                         init_std=0.2, chat_template=template, bos_prefix=True)
    replies = []
    for q in PROMPTS:
        assert generate_cli.main(["--model", str(d), "--prompt", q, "--greedy", "--max-new-tokens", "24",
                                  "--device", "cpu", "--json"]) == 0
        replies.append(json.loads(capsys.readouterr().out)["completion"])
    lm = LocalLM(d, compile=False)
    got = lm.generate([Request("generate", (q,), max_new_tokens=24, chat=True) for q in PROMPTS])
    assert got == replies
    assert all(r for r in replies)  # not vacuous: the tiny model says something to each prompt
