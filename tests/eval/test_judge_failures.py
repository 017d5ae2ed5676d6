"""Judge benchmarks that survive their judge: a stub OpenAI endpoint on 127.0.0.1 (started here)
answers HTTP 400 for some questions, a body without `choices` for others and an unratable judgment
for others. `kollm eval` must score what it can, count the rest with their errors, write
results.json with every answer and judge reply, resume from its on-disk cache without asking
again, and exit non-zero (loudly) when nothing could be scored."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kollm.data.judge import JudgeConfig
from kollm.eval.cli import main
from kollm.eval.judge import ChatItem, run_chat_benchmark


class Stub:
    def __init__(self):
        self.calls: list[str] = []  # "judge:<question>" / "model:<question>" per request
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                msgs = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["messages"]
                code, body = outer.reply(msgs)
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

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

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stub():
    s = Stub()
    yield s
    s.close()


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
    cfg = JudgeConfig(stub.url, "judge", max_retries=1, backoff_s=0.01)
    out = run_chat_benchmark(items, cfg, model_cfg=cfg, concurrency=2, judge_retries=1, cache=tmp_path / "c.jsonl")
    m = out["metrics"]
    assert (m["scored_turns"], m["errors"], m["unparsable"]) == (3, 6, 1)
    assert m["score"] == pytest.approx((7 + 9 + 7) / 3) and m["categories"] == {"stem": 7.0, "writing": 8.0}
    n = len(stub.calls)
    run_chat_benchmark(items, cfg, model_cfg=cfg, concurrency=2, judge_retries=1, cache=tmp_path / "c.jsonl")
    assert all(("q4xx" in c or "nochoice" in c or "modelfail" in c) for c in stub.calls[n:])
