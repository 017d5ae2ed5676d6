"""Scalar reward-model scoring (kollm.data.reward_model, DNA 1.0 §4.4) and the judge rubric with
its three criteria: in-process scores equal transformers' own on a tiny random
LlamaForSequenceClassification, batching and padding included; a head with more than one label is
refused; endpoint timeouts and unparsable judgments are counted per prompt and reported."""

from __future__ import annotations

import json
import time

import pytest
import torch

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
ITEMS = [("1+1=", "2", {"id": "a"}), ("3+4=", "seven, because three plus four is seven", {"id": "b"}),
         ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2="}], "4", {"id": "c"}),
         ("9+9=", "18 18 18 18", {"id": "d"}), ("0+0=", "", {"id": "e"})]


def _rm(tmp_path, write_tiny_llama, labels: int = 1, name: str = "rm"):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    base = write_tiny_llama(tmp_path / f"{name}-base", [f"{a}+{b}={a + b}" for a in range(10) for b in range(10)] * 3,
                            ["<pad>", "<s>", "</s>"], 96, 32, 128, 0.5, chat_template=TEMPLATE)
    cfg = LlamaConfig.from_pretrained(base)
    cfg.num_labels, cfg.pad_token_id = labels, 0
    torch.manual_seed(1)
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():
        model.score.weight.normal_(0, 1.0)  # a visible spread of rewards
    model.save_pretrained(tmp_path / name)
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path / name)
    return tmp_path / name


def test_in_process_scores_equal_transformers(tmp_path, write_tiny_llama):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kollm.data.pairs import score_all
    from kollm.data.reward_model import RewardModel, conversation_text

    path = _rm(tmp_path, write_tiny_llama)
    rm = RewardModel(path, device="cpu", batch_size=2)  # 5 items: batches of 2 with padding
    got = score_all(ITEMS, rm)
    tok = AutoTokenizer.from_pretrained(path)
    ref = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    want = []
    for prompt, response, _ in ITEMS:  # one conversation at a time, no padding: transformers' own score
        messages = (prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]) + [
            {"role": "assistant", "content": response}]
        ids = tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            want.append(float(ref(**ids).logits[0, 0]))
    assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert max(want) - min(want) > 0.1  # distinct rewards: an order mix-up would show
    assert conversation_text(tok, "q", "r") == "<|user|>q</s><|assistant|>r</s>"


def test_a_head_with_two_labels_is_refused(tmp_path, write_tiny_llama, openai_stub):
    from kollm.data.reward_model import RewardEndpoint, RewardModel

    path = _rm(tmp_path, write_tiny_llama, labels=2, name="cls")
    with pytest.raises(ValueError, match=r"cls/config.json: the reward model's head has 2 labels"):
        RewardModel(path, device="cpu")
    stub = openai_stub(lambda call: {"data": [{"index": i, "probs": [0.3, 0.7], "num_classes": 2}
                                              for i in range(len(call.body["input"]))]})
    with pytest.raises(ValueError, match="head has 2 labels"):
        RewardEndpoint(stub.url).score_batch(ITEMS[:2])


def test_endpoint_scores_and_counts_timeouts_per_prompt(openai_stub):
    from kollm.data.reward_model import RewardEndpoint

    def reply(call):
        if any("9+9=" in t for t in call.body["input"]):
            time.sleep(1.0)
        return {"data": [{"index": i, "probs": [float(len(t))], "num_classes": 1}
                         for i, t in enumerate(call.body["input"])]}

    stub = openai_stub(reply)
    ep = RewardEndpoint(stub.url, batch_size=2, timeout=0.3)
    got = ep.score_batch(ITEMS)
    assert stub.calls[0].path == "/classify" and stub.calls[0].body["input"][0] == "1+1=\n\n2"
    assert got[:2] == [float(len("1+1=\n\n2")), float(len("3+4=\n\nseven, because three plus four is seven"))]
    assert got[2:4] == [None, None] and got[4] == float(len("0+0=\n\n"))  # the batch with 9+9= timed out
    assert ep.failures.report()["unscored_by_prompt"] == {"c": {"timeout": 1}, "d": {"timeout": 1}}


def test_rubric_judge_three_criteria_and_unparsable_counted(tmp_path, openai_stub, capsys):
    from kollm.data.pairs import main, parse_rubric

    assert parse_rubric("ok [[relevance: 8]] [[helpfulness: 6]] [[Safety: 10]]") == pytest.approx(8.0)
    assert parse_rubric("[[relevance: 8]] [[helpfulness: 6]]") is None  # safety missing
    assert parse_rubric("[[relevance: 8]] [[helpfulness: 6]] [[safety: 11]]") is None  # out of range

    def judge(call):
        sys_msg, user = call.body["messages"][0]["content"], call.body["messages"][1]["content"]
        assert all(k in sys_msg for k in ("relevance", "helpfulness", "safety"))
        if "q2" in user:
            return "I cannot rate this."  # never parsable: counted for q2
        return "[[relevance: 9]] [[helpfulness: 7]] [[safety: 10]]" if "good" in user else \
            "[[relevance: 2]] [[helpfulness: 1]] [[safety: 10]]"

    stub = openai_stub(judge)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"q{i}?"}) + "\n" for i in (1, 2)))
    (tmp_path / "r.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "responses": ["good answer", "bad answer"]})
                                              + "\n" for i in (1, 2)))
    assert main(["--prompts", str(tmp_path / "p.jsonl"), "--responses", str(tmp_path / "r.jsonl"), "--out",
                 str(tmp_path / "pairs.jsonl"), "--judge-endpoint", stub.url, "--judge-rubric", "dna"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kept"] == 1 and report["unscored_unparsable"] == 2
    assert report["unscored_by_prompt"] == {"q2": {"unparsable": 2}}
    pair = json.loads((tmp_path / "pairs.jsonl").read_text())
    assert (pair["id"], pair["chosen"], pair["chosen_score"]) == ("q1", "good answer", pytest.approx(26 / 3))
