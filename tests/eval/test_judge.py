"""LLM-as-judge against a real HTTP server on 127.0.0.1 (the `openai_stub` fixture) that plays both
the chat model being evaluated and the judge: two-turn answering with history, FastChat and LogicKor
prompts and rating formats, unparsable judgments retried then counted (never guessed), the
concurrency limit, and the harness task wrapper."""

import json
import threading
import time

import pytest

from kollm.eval.judge import ChatItem, parse_fastchat, parse_logickor, run_chat_benchmark
from kollm.eval.task import get_task
from kollm.openai_client import ClientConfig


class Server:
    """Answers chat completions (on a stub server, tests/conftest.py). Judge requests (a system prompt)
    get a rating chosen from the question text: `flaky` is unparsable once, `never` always; the rest
    score by turn."""

    def __init__(self, openai_stub):
        self.lock = threading.Lock()
        self.seen: dict[str, int] = {}
        self.overlapped = threading.Event()
        self.wait_for_overlap = False  # set by the test of the concurrency limit
        self.http = openai_stub(self.answer)
        self.url = self.http.url

    @property
    def log(self) -> list[list[dict]]:
        return [c.body["messages"] for c in self.http.calls]

    def answer(self, call) -> str:
        # Until two requests have been in flight at once, a request waits (up to 10 s) for a second
        # one: the overlap the concurrency test asserts is then the client's doing, not a race
        # between its threads that a loaded machine can lose.
        deadline = time.monotonic() + 10
        while self.wait_for_overlap and not self.overlapped.is_set() and time.monotonic() < deadline:
            if self.http.in_flight >= 2:
                self.overlapped.set()
            time.sleep(0.005)
        return self.reply(call.body["messages"])

    def reply(self, messages):
        if messages[0]["role"] != "system":  # the model under test: echo how much history it got
            return f"answer#{len(messages)} to {messages[-1]['content'][:12]}"
        user = messages[-1]["content"]
        multi = "Assistant A's Conversation" in user or "Follow-up Question" in user
        key = ("never" if "never" in user else "flaky" if "flaky" in user else "ok") + str(multi)
        with self.lock:
            self.seen[key] = self.seen.get(key, 0) + 1
            n = self.seen[key]
        if key.startswith("never") or (key.startswith("flaky") and n == 1):
            return "The answer is fine overall."  # no rating
        if "점수" in messages[0]["content"]:
            return f"평가: 좋습니다.\n**점수:** {6 if multi else 8}"
        return f"Good. Rating: [[{5 if multi else 9}]]" if "Reference" not in user else "Rating: [[3]]"


@pytest.fixture
def server(openai_stub):
    return Server(openai_stub)


def test_parsers():
    assert parse_fastchat("Rating: [[5]]") == 5.0 and parse_fastchat("[[7.5]] and [[2]]") == 7.5
    assert parse_fastchat("score [6]") == 6.0 and parse_fastchat("no rating here") is None
    assert parse_logickor("평가: 좋다\n점수: 8.5") == 8.5 and parse_logickor("**점수**: 9") == 9.0
    assert parse_logickor("점수 없음") is None


def test_mt_bench_two_turns_retries_and_concurrency(server):
    server.wait_for_overlap = True
    items = [ChatItem.from_row(r) for r in [
        {"question_id": 81, "category": "writing", "turns": ["Write a blog post", "Rewrite it"]},
        {"question_id": 111, "category": "math", "turns": ["Area of triangle?", "Circle area?"],
         "reference": ["3", "5 pi"]},
        {"question_id": 90, "category": "writing", "turns": ["flaky question", "second"]},
        {"question_id": 91, "category": "roleplay", "turns": ["never rated", "second"]},
    ]]
    cfg = ClientConfig(server.url, "judge")
    out = run_chat_benchmark(items, cfg, "fastchat", model_cfg=ClientConfig(server.url, "m"), concurrency=2,
                             judge_retries=2)
    recs = {r["qid"]: r for r in out["records"]}
    # turn 2 is answered with the turn-1 exchange as history (3 messages)
    assert recs["81"]["answers"] == ["answer#1 to Write a blog", "answer#3 to Rewrite it"]
    assert recs["81"]["scores"] == [9.0, 5.0]
    assert recs["111"]["scores"] == [3.0, 3.0]  # math: the reference-answer prompts were used
    assert recs["90"]["scores"] == [9.0, 5.0] and len(recs["90"]["judgments"][0]) == 2  # retried once
    assert recs["91"]["scores"] == [None, None] and [len(j) for j in recs["91"]["judgments"]] == [3, 3]
    m = out["metrics"]
    assert m["unparsable"] == 2 and m["judge_calls"] == 2 + 2 + 4 + 6
    assert m["score"] == pytest.approx((9 + 5 + 3 + 3 + 9 + 5) / 6)
    assert m["turn1"] == pytest.approx(7.0) and m["categories"]["math"] == 3.0
    assert 1 < server.http.max_in_flight <= 2
    judge_prompts = [msgs for msgs in server.log if msgs[0]["role"] == "system"]
    single = next(p for p in judge_prompts if "[Question]\nWrite a blog post" in p[1]["content"])
    assert single[0]["content"] == "You are a helpful assistant." and "[[rating]]" in single[1]["content"]
    ref = next(p for p in judge_prompts if "### Reference answer:\n5 pi" in p[1]["content"])
    assert "focus on the assistant's answer to the second question" in ref[0]["content"]


def test_logickor_style_and_categories(server):
    items = [ChatItem.from_row({"id": 3, "category": "추론(Reasoning)", "questions": ["민수의 셔츠는?", "섞으면?"],
                                "references": ["다섯 벌", None]}),
             ChatItem.from_row({"id": 36, "category": "문법(Grammar)", "questions": ["맞춤법?", "정렬해봐."]})]
    answers = {"3": ["다섯 벌입니다.", "검은색입니다."], "36": ["개수, 초점", "가나다순"]}
    out = run_chat_benchmark(items, ClientConfig(server.url, "judge"), "logickor", answers=answers, concurrency=3)
    m = out["metrics"]
    assert m["single"] == 8.0 and m["multi"] == 6.0 and m["score"] == 7.0
    assert set(m["categories"]) == {"추론", "문법"} and m["unparsable"] == 0
    prompt = next(p[1]["content"] for p in server.log if "Follow-up Question" in p[1]["content"]
                  and "다섯 벌입니다" in p[1]["content"])
    assert "**Additional Reference**\n다섯 벌" in prompt and prompt.endswith("[[대화 종료. 평가 시작.]]")


def test_harness_task(server, tmp_path):
    d = tmp_path / "ko_mt_bench"
    d.mkdir()
    (d / "question.jsonl").write_text(
        json.dumps({"question_id": 1, "category": "writing", "turns": ["여행 계획을 써줘", "더 짧게"]}, ensure_ascii=False)
        + "\n" + json.dumps({"question_id": 2, "category": "writing", "turns": ["one turn only"]}) + "\n")
    task = get_task("ko_mt_bench", judge_url=server.url, model_url=server.url)
    items = task.load(tmp_path)
    assert len(items) == 1 and len(task.bad_rows) == 1 and "question.jsonl:2" in task.bad_rows[0]
    assert task.source == {"questions": str(d / "question.jsonl"), "reference_answers": "inline `reference` of the "
                           "question file", "judge_prompts": "built-in FastChat single-v1 prompts (English)"}
    assert task.requests(items[0]) == []
    m = task.process(items[0], [])
    assert m == {"score": 7.0, "turn1": 9.0, "turn2": 5.0, "unparsable": 0, "errors": 0, "unscored": 0,
                 "category/writing": 7.0}
    with pytest.raises(ValueError, match="needs a judge"):
        get_task("mt_bench").process(items[0], [])
