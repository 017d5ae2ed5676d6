"""Judge benchmarks that survive their judge: a stub OpenAI endpoint on 127.0.0.1 (`openai_stub`)
answers HTTP 400 for some questions, a body without `choices` for others and an unratable judgment
for others. `kollm eval` must score what it can, count the rest with their errors, write
results.json with every answer and judge reply, resume from its on-disk cache without asking
again, and exit non-zero (loudly) when nothing could be scored."""

import json
import threading

import pytest

from kollm.eval.cli import main
from kollm.eval.judge import ChatItem, run_chat_benchmark
from kollm.openai_client import ClientConfig


class Stub:
    """The model and the judge behind one stub server (tests/conftest.py); `calls` logs each request
    as "judge:<last message>" or "model:<last message>"."""

    def __init__(self, openai_stub):
        self.calls: list[str] = []  # "judge:<question>" / "model:<question>" per request
        self.lock = threading.Lock()
        self.url = openai_stub(lambda call: self.reply(call.body["messages"])).url

    def reply(self, msgs):
        judge = msgs[0]["role"] == "system"
        text = msgs[-1]["content"]
        with self.lock:
            self.calls.append(("judge:" if judge else "model:") + text)
        ok = lambda t: (200, {"choices": [{"message": {"role": "assistant", "content": t}}]})  # noqa: E731
        if not judge:
            return (400, {"error": "bad model request"}) if "modelfail" in text else ok(f"답변 {len(msgs)}")
        if "q4xx" in text:
            return 400, {"error": {"message": "context length exceeded"}}
        if "nochoice" in text:
            return 200, {"error": {"message": "quota exhausted"}}
        if "garbled" in text:
            return ok("I cannot rate this.")
        return ok("Fine. Rating: [[9]]" if "Assistant A's Conversation" in text else "Rating: [[7]]")


@pytest.fixture
def stub(openai_stub):
    return Stub(openai_stub)


def write_questions(d, rows, name="question_ko.jsonl"):
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


ROWS = [{"question_id": 1, "category": "writing", "turns": ["여행 계획", "더 짧게"]},
        {"question_id": 2, "category": "writing", "turns": ["q4xx 질문", "둘째"]},
        {"question_id": 3, "category": "roleplay", "turns": ["nochoice 질문", "둘째"]},
        {"question_id": 4, "category": "stem", "turns": ["modelfail 질문", "둘째"]},
        {"question_id": 5, "category": "stem", "turns": ["물리 질문", "garbled 후속"]}]


def run_cli(stub, data, out, task="ko_mt_bench"):
    args = ["--model", stub.url, "--tasks", task, "--data-dir", str(data), "--out", str(out)]
    for kv in (f"judge_url={stub.url}", f"model_url={stub.url}", "request_retries=1", "backoff_s=0.01"):
        args += ["--task-arg", f"{task}:{kv}"]
    return main(args)


def test_failures_are_unscored_items_and_the_run_resumes(stub, tmp_path, capsys):
    write_questions(tmp_path / "data" / "ko_mt_bench", ROWS)
    out = tmp_path / "out"
    assert run_cli(stub, tmp_path / "data", out) == 0
    res = json.loads((out / "results.json").read_text())
    m = res["results"]["ko_mt_bench"]["metrics"]
    # item 1: 7 and 9; item 5: turn 1 = 7, turn 2 never rated; items 2-4 failed calls on both turns
    assert m["score"]["value"] == pytest.approx((8 + 7) / 2) and m["score"]["n"] == 2
    assert m["turn1"]["value"] == 7 and m["turn2"]["value"] == 9
    assert (m["errors"]["value"], m["unparsable"]["value"], m["unscored"]["value"]) == (6, 1, 3)
    assert m["category/writing"]["value"] == 8 and m["category/stem"]["value"] == 7
    assert "category/roleplay" not in m
    recs = res["samples"]["ko_mt_bench"]
    r1 = recs[0]
    assert r1["prompt"] == ["여행 계획", "더 짧게"]
    assert [t["answer"] for t in r1["responses"]] == ["답변 1", "답변 3"]
    assert r1["responses"][1]["judgments"] == ["Fine. Rating: [[9]]"] and r1["responses"][1]["score"] == 9
    assert "여행 계획" in r1["responses"][0]["judge_messages"][1]["content"]
    assert "HTTP 400" in recs[1]["responses"][0]["error"] and "context length" in recs[1]["responses"][0]["error"]
    assert "failed after 2 tries: 'choices'" in recs[2]["responses"][0]["error"]
    assert recs[3]["responses"][0]["error"].startswith("answering:")
    assert recs[4]["responses"][1]["judgments"] == ["I cannot rate this."] * 3 and recs[4]["responses"][1]["error"] is None
    assert "judge/answer failure" in capsys.readouterr().err

    # re-run: every stored answer and judgment comes from the cache; only the failures are asked again
    cache = out / "judge_cache_ko_mt_bench.jsonl"
    assert len(cache.read_text().splitlines()) == len(stub.calls) - 2 - 2 * 2 - 1  # 400s and empty bodies not kept
    stub.calls.clear()
    assert run_cli(stub, tmp_path / "data", out) == 0
    assert len(stub.calls) == 2 + 2 * 2 + 1
    assert all(("q4xx" in c or "nochoice" in c or "modelfail" in c) for c in stub.calls)
    again = json.loads((out / "results.json").read_text())["results"]["ko_mt_bench"]["metrics"]
    assert again["score"] == m["score"]


def test_nothing_scored_exits_nonzero(stub, tmp_path, capsys):
    write_questions(tmp_path / "data" / "ko_mt_bench", [
        {"question_id": 1, "category": "writing", "turns": ["garbled a", "garbled b"]},
        {"question_id": 2, "category": "writing", "turns": ["q4xx", "b"]}])
    assert run_cli(stub, tmp_path / "data", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert "NOTHING COULD BE SCORED" in err and "HTTP 400" in err
    m = json.loads((tmp_path / "out" / "results.json").read_text())["results"]["ko_mt_bench"]["metrics"]
    assert m["unparsable"]["value"] == 2 and m["errors"]["value"] == 2 and m["score"]["n"] == 0


def test_run_chat_benchmark_survives_and_caches(stub, tmp_path):
    items = [ChatItem.from_row(r) for r in ROWS]
    cfg = ClientConfig(stub.url, "judge", max_retries=1, backoff_s=0.01)
    out = run_chat_benchmark(items, cfg, model_cfg=cfg, concurrency=2, judge_retries=1, cache=tmp_path / "c.jsonl")
    m = out["metrics"]
    assert (m["scored_turns"], m["errors"], m["unparsable"]) == (3, 6, 1)
    assert m["score"] == pytest.approx((7 + 9 + 7) / 3) and m["categories"] == {"stem": 7.0, "writing": 8.0}
    n = len(stub.calls)
    run_chat_benchmark(items, cfg, model_cfg=cfg, concurrency=2, judge_retries=1, cache=tmp_path / "c.jsonl")
    assert all(("q4xx" in c or "nochoice" in c or "modelfail" in c) for c in stub.calls[n:])


# --- KO-MT-Bench as released (LG-AI-EXAONE/KoMT-Bench: FastChat's data/ layout) --------------------

JUDGE_PROMPTS_KO = [  # the release's four single-answer rows (pairwise rows are read past)
    {"name": "pair-v2", "type": "pairwise", "system_prompt": "공정한 심사위원", "prompt_template": "{question}"},
    {"name": "single-v1", "type": "single", "system_prompt": "당신은 유용한 어시스턴트입니다.",
     "prompt_template": "[Instruction]\n 답변을 1점부터 10점까지 평가: \"[[rating]]\", 예시: \"점수: [[5]]\".\n\n"
                        "[사용자 질문]\n{question}\n\n[어시스턴트 답변 시작]\n{answer}\n[어시스턴트 답변 끝]"},
    {"name": "single-math-v1", "type": "single", "system_prompt": "당신은 유용한 어시스턴트입니다.",
     "prompt_template": "[Instruction]\n 참조 답변과 비교\n\n[사용자 질문]\n{question}\n\n[참조용 답변 시작]\n"
                        "{ref_answer_1}\n[참조용 답변 끝]\n\n[어시스턴트 답변 시작]\n{answer}\n[어시스턴트 답변 끝]"},
    {"name": "single-v1-multi-turn", "type": "single", "system_prompt": "두번째 질문에 초점을 맞춰 평가 \"[[rating]]\"",
     "prompt_template": "<|어시스턴트 A와 사용자와의 대화 시작|>\n\n### 사용자:\n{question_1}\n\n### 어시스턴트 A:\n"
                        "{answer_1}\n\n### 사용자:\n{question_2}\n\n### 어시스턴트 A:\n{answer_2}\n\n"
                        "<|어시스턴트 A와 사용자와의 대화 종료|>"},
    {"name": "single-math-v1-multi-turn", "type": "single", "system_prompt": "참고 답변 두번째 질문 \"[[rating]]\"",
     "prompt_template": "<|참조용 답변 시작|>\n\n### 사용자:\n{question_1}\n\n### 참조용 답변:\n{ref_answer_1}\n\n"
                        "### 사용자:\n{question_2}\n\n### 참조용 답변:\n{ref_answer_2}\n\n<|참조용 답변 끝|>\n\n\n"
                        "<|어시스턴트 A와 사용자와의 대화 시작|>\n\n### 사용자:\n{question_1}\n\n### 어시스턴트 A:\n"
                        "{answer_1}\n\n### 사용자:\n{question_2}\n\n### 어시스턴트 A:\n{answer_2}\n\n"
                        "<|어시스턴트 A와 사용자와의 대화 끝|>"},
]
EN = [{"question_id": 81, "category": "writing", "turns": ["Write a blog post", "Rewrite it"]},
      {"question_id": 111, "category": "math", "turns": ["Triangle area?", "Circle area?"], "reference": ["3"]}]
KO = [{"question_id": 81, "category": "writing", "turns": ["블로그 글을 써줘", "사투리로 다시"]},
      {"question_id": 111, "category": "math", "turns": ["삼각형 넓이는?", "원의 넓이는?"], "reference": ["3"]},
      {"question_id": 121, "category": "coding", "turns": ["파이썬 함수", "테스트도"]}]  # no inline reference
REFS = [{"question_id": 111, "answer_id": "a", "model_id": "gpt-4", "choices": [{"index": 0, "turns": [
    "넓이는 3입니다.", "원의 넓이는 5π입니다."]}], "tstamp": 0},
        {"question_id": 121, "answer_id": "b", "model_id": "gpt-4", "choices": [{"index": 0, "turns": [
            "def f(): ...", "def test_f(): ..."]}], "tstamp": 0}]


def release(root):
    data = root / "data"
    write_questions(data / "mt_bench", EN, "question.jsonl")
    write_questions(data / "mt_bench", KO, "question_ko.jsonl")
    write_questions(data / "mt_bench" / "reference_answer_ko", REFS, "gpt-4.jsonl")
    write_questions(data, JUDGE_PROMPTS_KO, "judge_prompts_ko.jsonl")
    return data


def judge_msgs(stub):
    return [c[len("judge:"):] for c in stub.calls if c.startswith("judge:")]


def test_ko_mt_bench_release_prompts_and_references(stub, tmp_path):
    data = release(tmp_path)
    assert run_cli(stub, data, tmp_path / "out") == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())["results"]["ko_mt_bench"]
    src = res["source"]
    assert src["questions"] == str(data / "mt_bench" / "question_ko.jsonl")
    assert src["judge_prompts"] == str(data / "judge_prompts_ko.jsonl")
    assert src["reference_answers"] == str(data / "mt_bench" / "reference_answer_ko" / "gpt-4.jsonl")
    assert res["n"] == 3
    sent = judge_msgs(stub)
    # the release's Korean templates, and its GPT-4 references replace the inline short hint
    assert any(m.startswith("[Instruction]\n 답변을") and "[사용자 질문]\n블로그 글을 써줘" in m for m in sent)
    math1 = next(m for m in sent if "삼각형 넓이는?" in m and "[참조용 답변 시작]" in m)
    assert "[참조용 답변 시작]\n넓이는 3입니다.\n[참조용 답변 끝]" in math1
    assert any("### 참조용 답변:\n원의 넓이는 5π입니다." in m for m in sent)
    assert any("[참조용 답변 시작]\ndef f(): ..." in m for m in sent)  # the coding item has its reference now
    assert not any("Assistant A's Conversation" in m or "[Question]" in m for m in sent)


def test_mt_bench_reads_english_questions_and_falls_back(stub, tmp_path):
    data = release(tmp_path)
    assert run_cli(stub, data, tmp_path / "out", task="mt_bench") == 0
    src = json.loads((tmp_path / "out" / "results.json").read_text())["results"]["mt_bench"]["source"]
    assert src["questions"] == str(data / "mt_bench" / "question.jsonl")
    assert src["judge_prompts"].startswith("built-in") and src["reference_answers"].startswith("inline")
    sent = judge_msgs(stub)
    assert any("[Question]\nWrite a blog post" in m for m in sent)
    assert any("[The Start of Reference Answer]\n3\n" in m for m in sent)  # the inline hint, as before
    assert not any("블로그" in m for m in sent)
