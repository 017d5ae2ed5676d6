"""Chat rows → messages → ids with the trained-token mask: exactly the assistant replies and their
end-of-turn tokens, equal to transformers' own `{% generation %}` mask; bad rows counted by reason
with file:line."""

import json

import pytest

from kollm.data.chat import (
    DEFAULT_CHAT_TEMPLATE,
    BadRow,
    RowErrors,
    load_tokenizer,
    read_conversations,
    render,
    render_prompt,
    stop_token_ids,
    to_messages,
)

TEXTS = {"en": ["The capital of Korea is Seoul. How many apples are there? There are 12 apples."] * 30,
         "ko": ["한국의 수도는 서울입니다. 사과는 몇 개입니까? 사과는 12개입니다."] * 30}
CONVO = [{"role": "system", "content": "You are helpful."},
         {"role": "user", "content": "사과는 몇 개입니까?"},
         {"role": "assistant", "content": "사과는 12개입니다."},
         {"role": "user", "content": "How many apples?"},
         {"role": "assistant", "content": " There are 12 apples. \n"}]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from kollm.tokenizer.train import TokenizerConfig, save, train

    tok, summary, _ = train(TEXTS, TokenizerConfig(budgets={"en": 60, "ko": 60}))
    return save(tok, tmp_path_factory.mktemp("tok"), summary)


def test_mask_is_exactly_the_assistant_replies_and_their_end_of_turn(tok_dir):
    tok = load_tokenizer(tok_dir)
    ids, trained = render(tok, CONVO)
    assert ids == tok.apply_chat_template(CONVO, tokenize=True, return_dict=True)["input_ids"]
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id  # the template's BOS, once
    runs, cur = [], []
    for i, t in zip(ids, trained):
        if t:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    # two trained spans: each reply (trimmed, as the template trims) followed by <|eot_id|>
    assert [tok.decode(r) for r in runs] == ["사과는 12개입니다.<|eot_id|>", "There are 12 apples.<|eot_id|>"]
    # transformers' own mask from the template's {% generation %} blocks: the same tokens
    ref = tok.apply_chat_template(CONVO, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert [bool(m) for m in ref["assistant_masks"]] == trained


def test_prompt_ends_with_the_assistant_header_and_stops_on_end_of_turn(tok_dir):
    tok = load_tokenizer(tok_dir)
    ids = render_prompt(tok, CONVO[:2])
    assert tok.decode(ids).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert ids == render(tok, CONVO[:3])[0][: len(ids)]  # the reply continues exactly this prefix
    assert stop_token_ids(tok) == [tok.convert_tokens_to_ids("<|eot_id|>"), tok.eos_token_id]


def test_a_tokenizer_without_template_gets_the_default(tmp_path, tok_dir):
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    cfg.pop("chat_template")
    (tmp_path / "tokenizer.json").write_bytes((tok_dir / "tokenizer.json").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert load_tokenizer(tmp_path).chat_template == DEFAULT_CHAT_TEMPLATE


def test_a_template_that_rewrites_earlier_turns_is_refused(tok_dir):
    tok = load_tokenizer(tok_dir)
    # renders only the last message: prefixes of the conversation are not prefixes of its rendering
    tok.chat_template = "{{ messages[-1]['content'] }}"
    with pytest.raises(ValueError, match="concatenation"):
        render(tok, CONVO)


@pytest.mark.parametrize("row,expected", [
    ({"prompt": "2+2?", "completion": "4"}, [("user", "2+2?"), ("assistant", "4")]),
    ({"prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
      "completion": [{"role": "assistant", "content": "a"}]}, [("system", "s"), ("user", "q"), ("assistant", "a")]),
    ({"instruction": "Add.", "input": "2 2", "output": "4"}, [("user", "Add.\n\n2 2"), ("assistant", "4")]),
    ({"instruction": "Add.", "input": "", "output": "4"}, [("user", "Add."), ("assistant", "4")]),
])
def test_row_formats(row, expected):
    assert [(m["role"], m["content"]) for m in to_messages(row)] == expected


@pytest.mark.parametrize("row,reason", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "no_assistant_turn"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}, "unknown_role"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}, "empty_content"),
    ({"text": "plain"}, "unknown_format"),
    ([1, 2], "not_an_object"),
])
def test_bad_rows_name_their_reason(row, reason):
    with pytest.raises(BadRow) as e:
        to_messages(row)
    assert e.value.reason == reason


def test_bad_rows_are_counted_with_file_and_line_and_the_rest_kept(tmp_path):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    lines = [json.dumps(good), "{not json", json.dumps({"messages": [{"role": "user", "content": "q"}]}),
             "[" * 100_000 + "]" * 100_000, json.dumps(good)]
    f = tmp_path / "chat.jsonl"
    f.write_text("\n".join(lines) + "\n")
    errors = RowErrors()
    got = list(read_conversations(f, errors))
    assert [line for _, line, _, _ in got] == [1, 5]
    assert errors.counts == {"bad_json": 1, "nested_too_deep": 1, "no_assistant_turn": 1}
    assert errors.where["no_assistant_turn"] == [f"{f}:3"]
    assert "3 bad rows skipped" in errors.summary()
