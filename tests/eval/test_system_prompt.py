"""`kollm eval --system-prompt`: generation requests that use the chat template get a system turn
first — in process through the tokenizer's template, at an endpoint as a system message."""

from __future__ import annotations

from kollm.eval.models import LocalLM, OpenAIEndpoint
from kollm.eval.task import Request

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_endpoint_sends_the_system_message(openai_stub):
    stub = openai_stub(lambda call: "42")
    m = OpenAIEndpoint(stub.url)
    m.system_prompt = "Answer in Korean."
    assert m.generate([Request("generate", ("6×7?",), chat=True)]) == ["42"]
    assert stub.calls[0].body["messages"] == [{"role": "system", "content": "Answer in Korean."},
                                              {"role": "user", "content": "6×7?"}]


def test_local_model_renders_the_system_turn(write_tiny_llama, tmp_path, monkeypatch):
    import kollm.serve.engine as engine

    d = write_tiny_llama(tmp_path / "m", ["1+1=2"] * 20, ["<pad>", "<s>", "</s>"], 64, 32, 128, 0.5,
                         chat_template=TEMPLATE)
    m = LocalLM(d, max_length=64)
    m.system_prompt = "Be brief."
    seen = []
    monkeypatch.setattr(engine.Engine, "run", lambda self, reqs, **kw: seen.extend(s.prompt for r in reqs for s in r.seqs))
    m.generate([Request("generate", ("1+1=",), max_new_tokens=2, chat=True)])
    assert m.tokenizer.decode(seen[0]) == "<|system|>Be brief.</s><|user|>1+1=</s><|assistant|>"
