"""`kollm dpo sample` (kollm.data.samples): k samples per prompt through an OpenAI-compatible
endpoint or in process; a rerun asks only for what is missing; timeouts and HTTP errors are
counted per prompt and reported; the rows feed `kollm dpo pairs`."""

from __future__ import annotations

import json
import time

from kollm.data.samples import main

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _prompts(tmp_path, n=3):
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n"
                         for i in range(n)) + "{broken\n")
    return p


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_endpoint_samples_failures_counted_and_rerun(tmp_path, openai_stub, capsys):
    prompts, out = _prompts(tmp_path), tmp_path / "samples.jsonl"

    def flaky(call):
        user = call.body["messages"][-1]["content"]
        if user == "1+1=" and call.body["seed"] % 2 == 0:  # q1's even-seeded samples: one times out, one 500s
            if call.body["seed"] % 4 == 0:
                time.sleep(1.0)
            else:
                return 500, {"error": "overloaded"}
        return f"answer to {user} #{call.body['seed']}"

    stub = openai_stub(flaky)
    argv = ["--prompts", str(prompts), "--out", str(out), "--endpoint", stub.url, "--k", "4", "--batch", "5",
            "--timeout", "0.3", "--system-prompt", "Be brief.", "--seed", "0"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    seeds_q1 = [1 * 4 + j for j in range(4)]  # seed·1,000,003 + position·k + sample
    assert report["failed_prompts"] == 1 and report["failed_samples"] == 2
    assert report["failed_by_prompt"] == {"q1": {"timeout": 1, "http_500": 1}}
    assert report["samples"] == 10 and report["wanted"] == 12 and report["bad_prompt_rows_bad_json"] == 1
    assert stub.calls[0].body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sorted(c.body["seed"] for c in stub.calls) == list(range(12))
    got = {(r["id"], r["sample"]) for r in _rows(out)}
    assert got == {(f"q{i}", j) for i in range(3) for j in range(4)} - {("q1", 0), ("q1", 2)}
    assert seeds_q1 == [4, 5, 6, 7]

    # the rerun asks exactly for the two missing samples, now answered
    good = openai_stub(lambda call: f"answer to {call.body['messages'][-1]['content']} #{call.body['seed']}")
    argv[argv.index("--endpoint") + 1] = good.url
    assert main(argv) == 0
    assert sorted(c.body["seed"] for c in good.calls) == [4, 6]
    rows = _rows(out)
    assert len(rows) == 12 and {(r["id"], r["sample"]) for r in rows} == {(f"q{i}", j) for i in range(3) for j in range(4)}
    assert "failed_samples" not in json.loads(capsys.readouterr().out)
    # a third run has nothing to ask
    assert main(argv) == 0 and len(good.calls) == 2


def test_in_process_samples_resume_identically_and_feed_pairs(tmp_path, write_tiny_llama, capsys):
    from kollm.data.pairs import build_pairs, read_prompts, read_responses

    model = write_tiny_llama(tmp_path / "m", [f"{a}+{b}={a + b}" for a in range(10) for b in range(10)] * 3,
                             ["<pad>", "<s>", "</s>"], 96, 32, 128, 0.5, chat_template=TEMPLATE)
    prompts = _prompts(tmp_path)
    full, cut = tmp_path / "full.jsonl", tmp_path / "cut.jsonl"
    base = ["--prompts", str(prompts), "--model", str(model), "--k", "2", "--batch", "2", "--max-new-tokens", "5"]
    assert main(base + ["--out", str(full)]) == 0
    rows = _rows(full)
    assert len(rows) == 6 and [(r["id"], r["sample"]) for r in rows] == [(f"q{i}", j) for i in range(3) for j in range(2)]
    # a crash after the first batch, mid-way through writing the second: the rerun gives the same rows
    lines = full.read_text().splitlines(keepends=True)
    cut.write_text(lines[0] + lines[1] + lines[2][:7])
    assert main(base + ["--out", str(cut)]) == 0
    assert _rows(cut) == rows
    capsys.readouterr()
    table, _ = read_prompts(str(prompts))
    responses, bad = read_responses([str(full)], table)
    assert not bad and sum(map(len, responses.values())) == 6
    pairs, counts = build_pairs(table, responses, lambda p, r, row: float(len(r)))
    assert counts["kept"] + counts["tie"] + counts.get("length_ratio", 0) == 3
