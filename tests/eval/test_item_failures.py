"""One item that cannot be generated or scored costs only that item: it is counted with its reason
in results.json, the other items are scored, and everything generated is written."""

import json

from kollm.eval.harness import EvalConfig, evaluate, write_results
from kollm.eval.models import OpenAIEndpoint
from kollm.eval.task import Request, Task, get_task

SOLUTION = "6 * 7 = 42\n#### 42"


def test_endpoint_failures_and_a_numeric_answer_cost_one_item_each(tmp_path, openai_stub):
    d = tmp_path / "gsm8k" / "main"
    d.mkdir(parents=True)
    rows = [{"question": f"q{i}", "answer": SOLUTION} for i in range(4)]
    rows.insert(1, {"question": "qn", "answer": 42})  # numeric: was a TypeError after all generation
    (d / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def reply(call):
        q = call.body["prompt"].rsplit("Question: ", 1)[1].split("\n")[0]
        if q == "q1":
            return 200, b'{"choices": [{"text": " 42 \\ud800 #### 42"}]}'  # a lone surrogate
        if q == "q2":
            return {"error": "overloaded"}  # no choices
        return {"choices": [{"text": " The answer is 42."}]}

    server = openai_stub(reply)
    res = evaluate(OpenAIEndpoint(server.root, chat=False), [(get_task("gsm8k"), 0)],
                   EvalConfig(data_dir=str(tmp_path)), log=lambda m: None)
    r = res["results"]["gsm8k"]
    assert r["bad_rows"] == 1 and r["n"] == 4
    assert r["failed_items"]["count"] == 2
    assert r["failed_items"]["reasons"] == {"generation: invalid_unicode": 1, "generation: malformed_reply": 1}
    assert r["metrics"]["exact_match_flexible"] == {"value": 1.0, "stderr": 0.0, "n": 2}
    path = write_results(res, tmp_path / "out")
    samples = json.loads(path.read_text(encoding="utf-8"))["samples"]["gsm8k"]
    assert [s.get("failed", "").split(":")[0] for s in samples] == ["", "generation failed", "generation failed", ""]
    assert samples[1]["responses"] == [" 42 ? #### 42"]  # what came back is kept


class Picky(Task):
    name, output_type = "picky", "generate"

    def load(self, data_dir):
        return [{"q": "a", "gold": "x"}, {"q": "b", "gold": 7}, {"q": "c", "gold": "y"}]

    def requests(self, item, fewshot=()):
        return [Request("generate", (item["q"],))]

    def process(self, item, results):
        return {"exact_match": float(results[0].strip() == item["gold"].strip())}  # str-only gold


class Echo:
    name = "echo"

    def generate(self, requests):
        return ["x" if q.args[0] == "a" else "\ud800" if q.args[0] == "c" else "7" for q in requests]


def test_a_scorer_error_costs_one_item_and_generations_are_written(tmp_path):
    res = evaluate(Echo(), [(Picky(), 0)], EvalConfig(), log=lambda m: None)
    r = res["results"]["picky"]
    assert r["failed_items"]["count"] == 1 and r["failed_items"]["reasons"] == {"scoring: AttributeError": 1}
    assert r["metrics"]["exact_match"]["n"] == 2
    path = write_results(res, tmp_path)  # a lone surrogate from a back-end is written as its escape
    samples = json.loads(path.read_text(encoding="utf-8"))["samples"]["picky"]
    assert [s["responses"] for s in samples] == [["x"], ["7"], ["\ud800"]]


class Cutting(Echo):
    def generate(self, requests):
        self.truncated = {i for i, q in enumerate(requests) if len(q.args[0]) > 1}  # "too long for the context"
        return super().generate(requests)


def test_prompts_cut_to_fit_the_context_are_counted():
    # a 5 MB row used to be cut to the model's context without a trace in results.json
    task = Picky()
    task.load = lambda data_dir: [{"q": "a", "gold": "x"}, {"q": "a" * 5_000_000, "gold": "x"}]
    res = evaluate(Cutting(), [(task, 0)], EvalConfig(), log=lambda m: None)
    assert res["results"]["picky"]["truncated_prompts"] == 1
    assert [s.get("truncated", False) for s in res["samples"]["picky"]] == [False, True]


def test_a_failing_aggregate_still_returns_the_generations():
    task = Picky()
    task.aggregate = lambda per_item, iters, seed: 1 / 0
    res = evaluate(Echo(), [(task, 0)], EvalConfig(), log=lambda m: None)
    r = res["results"]["picky"]
    assert r["metrics"] == {} and r["failed_items"]["reasons"]["aggregate"] == 1
    assert [s["responses"] for s in res["samples"]["picky"]] == [["x"], ["7"], ["\ud800"]]
