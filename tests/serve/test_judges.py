"""The judge clients that exist, end to end against `kollm serve` with a tiny random model: the
curation judge (`kollm.data.judge`) and the chat-benchmark judges (`kollm.eval.judge`). A random
model writes no valid score, so the point is the HTTP path: every request answered, every answer
the server's greedy reply to exactly those messages, unparsable answers counted (never guessed)."""

from kollm.data.judge import JudgeConfig, build_messages, judge_documents, load_cache, parse_score
from kollm.eval.judge import ChatItem, parse_fastchat, run_chat_benchmark

from .conftest import API_KEY


def cfg(server, **kw) -> JudgeConfig:
    return JudgeConfig(**{"endpoint": server.base_url, "model": server.model, "api_key": API_KEY, "max_tokens": 12,
                          "concurrency": 4, "max_retries": 0, **kw})


def greedy(client, server, messages, max_tokens=12) -> str:
    r = client.chat.completions.create(model=server.model, messages=messages, max_tokens=max_tokens, temperature=0)
    return r.choices[0].message.content


def test_curation_judge_against_kollm_serve(server, client, tmp_path):
    docs = [{"id": str(i), "text": t, "lang": lang, "source": f"docs.jsonl:{i + 1}"} for i, (t, lang) in enumerate([
        ("Photosynthesis turns light into chemical energy.", "en"), ("광합성은 빛을 화학 에너지로 바꾼다.", "ko"),
        ("Buy cheap watches now!!!", "en"), ("서울은 대한민국의 수도이다.", "ko"), ("The fox jumps.", "en")])]
    c = cfg(server, max_chars=200)
    rows, summary = judge_documents(docs, c, tmp_path / "cache.jsonl")
    assert summary["failed"] == 0 and summary["requested"] == len(docs)
    assert summary["scored"] + summary["unparsable"] == len(docs) == len(load_cache(tmp_path / "cache.jsonl"))
    answers = {d["id"]: greedy(client, server, build_messages(d["text"], d["lang"], c.max_chars)) for d in docs}
    assert sorted(r["id"] for r in rows) == sorted(i for i, a in answers.items() if parse_score(a) is not None)
    assert summary["unparsable"] == sum(parse_score(a) is None for a in answers.values())
    assert {e["answer"] for e in summary["unparsable_examples"]} <= {a[:300] for a in answers.values()}
    again_rows, again = judge_documents(docs, c, tmp_path / "cache.jsonl")  # all cached now
    assert again["requested"] == 0 and again["from_cache"] == len(docs) and again_rows == rows


def test_chat_benchmark_judge_against_kollm_serve(server, client):
    items = [ChatItem("1", "writing", ["Write about Seoul.", "Shorter, please."], [None, None]),
             ChatItem("2", "math", ["What is 2+3?", "And 4+4?"], ["5", "8"])]
    judge, model = cfg(server), cfg(server, max_tokens=8)
    out = run_chat_benchmark(items, judge, style="fastchat", model_cfg=model, concurrency=3, judge_retries=1)
    recs = {r["qid"]: r for r in out["records"]}
    for item in items:
        r = recs[item.qid]
        a1 = greedy(client, server, [{"role": "user", "content": item.turns[0]}], 8)
        hist = [{"role": "user", "content": item.turns[0]}, {"role": "assistant", "content": a1},
                {"role": "user", "content": item.turns[1]}]
        assert r["answers"] == [a1, greedy(client, server, hist, 8)]  # turn 2 saw turn 1's exchange
        for score, texts in zip(r["scores"], r["judgments"]):
            # greedy judge: a retry returns the same text, so a rating parses at once or never
            assert score == parse_fastchat(texts[0])
            assert len(texts) == (1 if score is not None else 2) and len(set(texts)) == 1
    m = out["metrics"]
    assert m["unparsable"] == sum(s is None for r in recs.values() for s in r["scores"])
    assert m["judge_calls"] == sum(len(t) for r in recs.values() for t in r["judgments"])
