"""LLM judge against a real loopback OpenAI-compatible server: retries, concurrency limit, cache,
resume after interruption, Korean prompt for Korean text, unparsable answers counted."""

import json
import re
import threading

import pytest

from kollm.cli import main as kollm_main
from kollm.data.judge import PROMPT_KO, JudgeConfig, judge_documents, parse_score


class FakeJudge:
    """Scores a document by the `[score=N]` tag in its text; FLAKY fails once with 500, RATE once
    with 429, GARBAGE gets an answer without a score. Served by `openai_stub` (tests/conftest.py)."""

    def __init__(self, openai_stub):
        self.lock = threading.Lock()
        self.failed_once: set[str] = set()
        self.http = openai_stub(self.reply)
        self.url = self.http.url

    @property
    def requests(self) -> list[dict]:
        return [c.body for c in self.http.calls]

    @property
    def max_in_flight(self) -> int:
        return self.http.max_in_flight

    def reply(self, call):
        assert call.path == "/v1/chat/completions"
        prompt = call.body["messages"][0]["content"]
        threading.Event().wait(0.02)
        code = 200
        for marker, error in (("FLAKY", 500), ("RATE", 429)):
            if marker in prompt:
                with self.lock:
                    first = marker not in self.failed_once
                    self.failed_once.add(marker)
                if first:
                    code = error
        if code != 200:
            return code, None, {"Retry-After": "0"}
        m = re.search(r"\[score=(\d)\]", prompt)
        return "No idea." if "GARBAGE" in prompt else f"Looks fine.\nEducational score: {m.group(1)}"


@pytest.fixture
def server(openai_stub):
    return FakeJudge(openai_stub)


def _docs():
    docs = [{"id": str(i), "text": f"Document {i} about science. [score={i % 6}]", "lang": "en", "source": f"x:{i}"}
            for i in range(16)]
    docs += [{"id": "ko", "text": "한국어 문서입니다. [score=4]", "lang": "ko", "source": "x:16"},
             {"id": "flaky", "text": "FLAKY server [score=3]", "lang": "en", "source": "x:17"},
             {"id": "rate", "text": "RATE limited [score=2]", "lang": "en", "source": "x:18"},
             {"id": "garbage", "text": "GARBAGE answer [score=5]", "lang": "en", "source": "x:19"}]
    return docs


def test_parse_score():
    assert parse_score("The extract is basic (1 point)...\nEducational score: 3") == 3
    assert parse_score("점수: 2\n총점: 4") == 4
    assert parse_score("Educational score: **5**") == 5
    assert parse_score("I think it deserves a six.") is None
    assert parse_score("Educational score: 7") is None
    assert parse_score("") is None


def test_judge_scores_retries_and_counts_unparsable(server, tmp_path):
    cfg = JudgeConfig(endpoint=server.url, model="m", concurrency=3, backoff_s=0.01)
    rows, summary = judge_documents(_docs(), cfg, tmp_path / "cache.jsonl")
    by_id = {r["id"]: r["score"] for r in rows}
    assert by_id == {**{str(i): i % 6 for i in range(16)}, "ko": 4, "flaky": 3, "rate": 2}
    assert summary["unparsable"] == 1 and summary["unparsable_examples"][0]["source"] == "x:19"
    assert summary["failed"] == 0 and summary["requested"] == 20
    assert len(server.requests) == 22  # 20 documents + one retry after 500 + one after 429
    assert 1 <= server.max_in_flight <= 3
    ko_prompt = next(r["messages"][0]["content"] for r in server.requests if "한국어 문서" in r["messages"][0]["content"])
    assert ko_prompt.startswith(PROMPT_KO[:20])
    assert all(r["model"] == "m" and r["temperature"] == 0.0 for r in server.requests)


def test_resume_after_interruption_asks_only_the_rest(server, tmp_path):
    cfg = JudgeConfig(endpoint=server.url, model="m", concurrency=4, backoff_s=0.01)
    docs = _docs()
    judge_documents(docs[:10], cfg, tmp_path / "cache.jsonl")  # the "interrupted" first run
    with open(tmp_path / "cache.jsonl", "a") as f:
        f.write('{"key": "abc", "ans')  # a line cut off by the kill
    before = len(server.requests)
    rows, summary = judge_documents(docs, cfg, tmp_path / "cache.jsonl")
    assert summary["from_cache"] == 10 and summary["requested"] == 10
    asked = [r["messages"][0]["content"] for r in server.requests[before:]]
    assert not any(f"Document {i} about" in p for i in range(10) for p in asked)
    assert len(rows) == 19
    again = len(server.requests)
    judge_documents(docs, cfg, tmp_path / "cache.jsonl")
    assert len(server.requests) == again  # everything cached now


def test_gives_up_after_retries_and_reports(tmp_path):
    cfg = JudgeConfig(endpoint="http://127.0.0.1:9/v1", model="m", max_retries=1, backoff_s=0.01, timeout_s=2)
    rows, summary = judge_documents(_docs()[:2], cfg, tmp_path / "cache.jsonl")
    assert rows == [] and summary["failed"] == 2


def test_cli_samples_per_language(server, tmp_path):
    src = tmp_path / "docs.jsonl"
    lines = [{"text": f"English text number {i}. [score={i % 6}]"} for i in range(12)]
    lines += [{"text": f"한국어 문장 번호 {i}. [score={i % 6}]"} for i in range(7)]
    src.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n{bad json\n")
    out = tmp_path / "judged"
    rc = kollm_main(["data", "judge", "--input", str(src), "--output", str(out), "--endpoint", server.url,
                     "--model", "m", "--per-language", "5", "--concurrency", "2"])
    assert rc == 0
    judged = [json.loads(x) for x in (out / "judged.jsonl").read_text().splitlines()]
    assert sorted(r["lang"] for r in judged) == ["en"] * 5 + ["ko"] * 5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seen_per_language"] == {"en": 12, "ko": 7} and summary["malformed_rows"] == 1
    assert all(r["score"] == int(re.search(r"score=(\d)", r["text"]).group(1)) for r in judged)
