"""`kollm dpo pairs`: best vs worst per prompt, ties and length-ratio drops counted, scores from a
`score` field, a reward function (dotted path), the math verifier, or a judge behind a loopback
OpenAI-compatible server."""

import json
import re

from kollm.cli import main as kollm_main
from kollm.data.pairs import choose_pairs, final_number, math_verifier


def reward_by_length(prompt, response, row):  # used by dotted path in tests (here and online DPO)
    return float(len(response))


def stub_judge(openai_stub, rate):
    """An OpenAI-compatible /v1/chat/completions (`openai_stub`, tests/conftest.py) that rates the answer
    between FastChat's markers with `rate(answer) -> int` in `[[N]]` form; returns the running stub
    (`.url`, `.calls`)."""

    def reply(call):
        text = call.body["messages"][-1]["content"]
        m = re.search(r"\[The Start of Assistant's Answer\]\n(.*)\n\[The End of Assistant's Answer\]", text, re.S)
        return f"Fine. Rating: [[{rate(m.group(1))}]]"

    return openai_stub(reply)


def test_choose_pairs_counts_each_reason():
    prompts = {k: {"prompt": f"q{k}"} for k in "abcdef"}
    responses = {
        "a": [{"response": "ok", "score": 1}, {"response": "best", "score": 3}, {"response": "bad", "score": 0}],
        "b": [{"response": "x", "score": 2}, {"response": "y", "score": 2}],  # tie
        "c": [{"response": "x" * 30, "score": 5}, {"response": "y", "score": 1}],  # 30× longer
        "d": [{"response": "only", "score": 1}, {"response": "lost", "score": None}],
        "f": [{"response": "same", "score": 1}, {"response": "same", "score": 0}],  # a pair with nothing to learn
    }
    pairs, counts = choose_pairs(prompts, responses, max_length_ratio=2.0)
    assert [(p["id"], p["chosen"], p["rejected"]) for p in pairs] == [("a", "best", "bad")]
    assert counts == {"kept": 1, "tie": 1, "length_ratio": 1, "fewer_than_two_scored": 2, "unscored": 1,
                      "same_response": 1}
    pairs, counts = choose_pairs(prompts, responses, max_length_ratio=None)
    assert counts["kept"] == 2


def test_final_number_and_verifier():
    assert final_number("그래서 답은 1,234개입니다.") == 1234
    assert final_number(r"x = \boxed{42} and later 7") == 42
    assert final_number("no digits") is None
    assert math_verifier("q", "The answer is 227.", {"answer": "227"}) == 1.0
    assert math_verifier("q", "The answer is 228.", {"answer": "227"}) == 0.0


def _files(tmp_path, responses):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"id": "p1", "prompt": "3+4?", "answer": "7"},
        {"id": "p2", "prompt": [{"role": "user", "content": "10-2?"}], "answer": "8"},
        {"id": "p3"},  # no prompt: counted
    ]) + "\n")
    resp = tmp_path / "responses.jsonl"
    resp.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in responses) + "\nnot json\n")
    return prompts, resp


def test_cli_with_verifier(tmp_path, capsys):
    prompts, resp = _files(tmp_path, [
        {"id": "p1", "responses": ["3+4=7. The answer is 7.", "3+4=8. The answer is 8."]},
        {"id": "p2", "response": "10-2=8, so 8"},
        {"id": "p2", "response": "10-2=9, so 9"},
        {"id": "p9", "response": "who?"},
    ])
    out = tmp_path / "pairs.jsonl"
    assert kollm_main(["dpo", "pairs", "--prompts", str(prompts), "--responses", str(resp), "--out", str(out),
                       "--verifier", "math"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["kept"] == 2 and report["bad_prompt_rows_missing_prompt"] == 1
    assert report["bad_response_rows_unknown_prompt_id"] == 1 and report["bad_response_rows_bad_json"] == 1
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0] == {"id": "p1", "prompt": "3+4?", "chosen": "3+4=7. The answer is 7.",
                       "rejected": "3+4=8. The answer is 8.", "chosen_score": 1.0, "rejected_score": 0.0}
    assert rows[1]["chosen"] == [{"role": "assistant", "content": "10-2=8, so 8"}]


def test_cli_with_reward_function_and_judge(tmp_path, capsys, openai_stub):
    prompts, resp = _files(tmp_path, [{"id": "p1", "responses": ["short", "a longer one", "mid one"]}])
    out = tmp_path / "pairs.jsonl"
    assert kollm_main(["dpo", "pairs", "--prompts", str(prompts), "--responses", str(resp), "--out", str(out),
                       "--reward", f"{__name__}:reward_by_length"]) == 0
    row = json.loads(out.read_text())
    assert (row["chosen"], row["rejected"]) == ("a longer one", "short")
    judge = stub_judge(openai_stub, lambda answer: 9 if "mid" in answer else 2)
    assert kollm_main(["dpo", "pairs", "--prompts", str(prompts), "--responses", str(resp), "--out", str(out),
                       "--judge-endpoint", judge.url, "--max-length-ratio", "3"]) == 0
    seen = [c.body for c in judge.calls]
    assert len(seen) == 3 and "3+4?" in seen[0]["messages"][-1]["content"]
    row = json.loads(out.read_text())
    assert (row["chosen"], row["chosen_score"], row["rejected_score"]) == ("mid one", 9.0, 2.0)
    assert row["rejected"] in ("short", "a longer one")  # both rated 2: the first in file order
    assert row["rejected"] == "short"


def test_cli_refuses_unscored_without_scorer(tmp_path, capsys):
    prompts, resp = _files(tmp_path, [{"id": "p1", "responses": ["a", "b"]}])
    assert kollm_main(["dpo", "pairs", "--prompts", str(prompts), "--responses", str(resp), "--out",
                       str(tmp_path / "o.jsonl")]) == 1
    assert "no score" in capsys.readouterr().err
