"""`kollm data judge --rubric sft` against a loopback OpenAI-compatible server: every chat row is
judged with the response rubric (Korean requests with the Korean prompt), bad rows are counted with
file:line, and judged.jsonl is the rows with their score, which `min_score` then filters (Trillion
keeps scores above 3)."""

import json
import re

import pytest

from kollm.cli import main as kollm_main
from kollm.data.judge import PROMPT_SFT_EN, PROMPT_SFT_KO, parse_score


@pytest.fixture
def server(openai_stub):
    """A judge (tests/conftest.py's stub) that gives each row the score in its `[q=N]` tag."""
    return openai_stub(lambda call: "Fine.\nResponse score: "
                       + re.search(r"\[q=(\d)\]", call.body["messages"][0]["content"]).group(1))


def test_sft_rubric_scores_every_row_and_min_score_keeps_above_3(server, tmp_path, monkeypatch):
    url = server.url
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + {i}? [q={i % 6}]"},
                          {"role": "assistant", "content": f"{2 * i}"}]} for i in range(6)]
    rows += [{"prompt": "사과 두 개와 세 개를 더하면 몇 개인가요? [q=5]", "completion": "다섯 개입니다."},
             {"instruction": "Say hi [q=4]", "output": "hi"}]
    src = tmp_path / "chat.jsonl"
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows)
                   + '\n{"messages": [{"role": "user", "content": "no reply"}]}\n', encoding="utf-8")
    out = tmp_path / "judged"
    assert kollm_main(["data", "judge", "--rubric", "sft", "--input", str(src), "--output", str(out),
                       "--endpoint", url, "--model", "m", "--concurrency", "2"]) == 0
    judged = [json.loads(x) for x in (out / "judged.jsonl").read_text().splitlines()]
    assert [r["score"] for r in judged] == [0, 1, 2, 3, 4, 5, 5, 4]
    assert judged[6]["completion"] == "다섯 개입니다." and judged[7]["output"] == "hi"  # the rows, as given
    summary = json.loads((out / "summary.json").read_text())
    assert summary["malformed"]["counts"] == {"no_assistant_turn": 1} and summary["kept_above_3"] == 4
    assert f"{src}:9" in summary["malformed"]["examples"]["no_assistant_turn"][0]
    prompts = [c.body["messages"][0]["content"] for c in server.calls]
    ko = [p for p in prompts if "사과" in p]
    assert len(prompts) == 8 and ko[0].startswith(PROMPT_SFT_KO[:20])
    en = next(p for p in prompts if "What is 2 + 2" in p)
    assert en.startswith(PROMPT_SFT_EN[:40]) and "[User]\nWhat is 2 + 2? [q=2]\n\n[Assistant]\n4" in en
    assert parse_score("Response score: 4") == 4

    # judged.jsonl feeds `kollm sft` directly: min_score 4 keeps the four rows scored above 3
    from kollm.data import sft

    rendered = []
    monkeypatch.setattr(sft.chat, "render", lambda tok, messages: rendered.append(messages) or ([1, 2], [False, True]))
    convs = sft.load_conversations([str(out / "judged.jsonl")], tokenizer=None, min_score=4)
    assert len(convs) == 4 and convs.filtered == 4 and convs.errors.total == 0
    assert [m[-1]["content"] for m in rendered] == ["8", "10", "다섯 개입니다.", "hi"]
