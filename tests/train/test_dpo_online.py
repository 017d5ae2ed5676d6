"""`kollm dpo --online`: k samples per prompt from the current policy, scored by a reward function
(dotted path) or a judge behind a loopback OpenAI-compatible server, best vs worst trained by the
one trainer; the reference stays the round-0 policy; samples, scores and pairs of every round on
disk; resumable between rounds and within one (the same samples again)."""

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from kollm.cli import main as kollm_main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from test_pairs import stub_judge  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:torch.distributed is disabled")]
SPECIALS = ["<pad>", "<s>", "</s>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
TEXT = ["The answer is 7.", "하늘은 파랗다.", "Two plus two is four.", "답은 8입니다."] * 30


def char_reward(prompt, response, row):
    return float(sum(map(ord, response)) % 101)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, write_tiny_llama):
    root = tmp_path_factory.mktemp("online")
    model = write_tiny_llama(root / "model", TEXT, SPECIALS, vocab_size=300, hidden=32, max_positions=128,
                             init_std=0.1)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"{i} + {i}?", "answer": str(2 * i)}) + "\n"
                               for i in range(8)))
    cfg = {"name": "o", "output_dir": str(root / "run"), "seed": 0, "model": {"init_from": str(model)},
           "dpo": {"epochs": 1, "pairs_per_step": 4, "micro_batch": 4, "max_length": 64,
                   "online": {"prompts": str(prompts), "rounds": 1, "k": 3, "max_new_tokens": 6, "gen_batch": 10,
                              "reward": f"{__name__}:char_reward"}},
           "optimizer": {"lr": 1e-2, "weight_decay": 0.0}, "schedule": {"kind": "cosine", "warmup_steps": 1},
           "checkpoint": {"export_dtype": "float32"}, "logging": {"progress": False}}
    path = root / "online.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return root, path


def rows(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()]


def test_rounds_with_reward_function_and_resume(setup):
    root, cfg = setup
    run = root / "run"
    assert kollm_main(["dpo", "--online", str(cfg)]) == 0
    r0 = run / "round-0"
    samples = rows(r0 / "samples.jsonl")
    assert len(samples) == 8 * 3 and {s["sample"] for s in samples} == {0, 1, 2}
    scores = rows(r0 / "scores.jsonl")
    assert [s["score"] for s in scores] == [char_reward(None, s["response"], None) for s in samples]
    pairs = rows(r0 / "pairs.jsonl")
    summary = json.loads((r0 / "pairs.json").read_text())
    assert summary["kept"] == len(pairs) and summary["kept"] + summary.get("tie", 0) == 8
    for p in pairs:  # best vs worst of that prompt's samples
        mine = [s["score"] for s in scores if s["id"] == p["id"]]
        assert (p["chosen_score"], p["rejected_score"]) == (max(mine), min(mine))
    m0 = rows(r0 / "train" / "metrics.jsonl")
    assert m0[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # round 0: policy = reference

    assert kollm_main(["dpo", "--online", str(cfg), "--set", "dpo.online.rounds=2"]) == 1  # needs --resume
    assert kollm_main(["dpo", "--online", str(cfg), "--set", "dpo.online.rounds=2", "--resume"]) == 0
    assert rows(r0 / "samples.jsonl") == samples  # round 0 was not redone
    r1 = run / "round-1"
    assert json.loads((r1 / "pairs.json").read_text())["policy"].endswith("round-0/train/hf/latest")
    m1 = rows(r1 / "train" / "metrics.jsonl")
    # round 1 starts from the trained policy while the reference is still round 0's: loss ≠ ln 2
    assert abs(m1[0]["loss"] - math.log(2)) > 1e-4
    assert (r1 / "train" / "hf" / "latest" / "config.json").is_file()
    # the stage's model for what follows (recipes): OUT/hf/latest is the last round's policy
    assert (run / "hf" / "latest").resolve() == (r1 / "train" / "hf" / "latest").resolve()

    # within a round: lose round 1's end, its pairs and scores, and half its samples (one line cut short)
    want = rows(r1 / "samples.jsonl")
    (r1 / "done.json").unlink()
    (r1 / "pairs.jsonl").unlink()
    (r1 / "scores.jsonl").unlink()
    text = (r1 / "samples.jsonl").read_text().splitlines(keepends=True)
    (r1 / "samples.jsonl").write_text("".join(text[:13]) + text[13][:5])
    shutil.rmtree(r1 / "train")
    assert kollm_main(["dpo", "--online", str(cfg), "--set", "dpo.online.rounds=2", "--resume"]) == 0
    assert rows(r1 / "samples.jsonl") == want  # per-batch seeds: the same samples again
    assert rows(r1 / "train" / "metrics.jsonl")[0]["loss"] == pytest.approx(m1[0]["loss"], abs=1e-6)


def test_round_with_judge_server(setup, openai_stub):
    root, cfg = setup
    run = root / "judged"
    judge = stub_judge(openai_stub, lambda answer: len(answer) % 10 + 1)
    assert kollm_main(["dpo", "--online", str(cfg), "--set", f"output_dir={run}", "--set",
                       "dpo.online.reward=null", "--set", f"dpo.online.judge={{endpoint: '{judge.url}'}}"]) == 0
    assert len(judge.calls) == 8 * 3
    scores = rows(run / "round-0" / "scores.jsonl")
    assert [s["score"] for s in scores] == [len(s["response"]) % 10 + 1 for s in scores]
    assert (run / "round-0" / "done.json").is_file()


def test_round_judged_by_kollm_serve(setup):
    """The same round with the judge behind a real `kollm serve` (serving the tiny model itself): every
    response goes through the server's chat endpoint; a tiny model's verdicts carry no [[score]], so
    each is counted unscored and the round stops with a message saying so, instead of training on
    nothing."""
    from kollm.serve.testing import running_server

    root, cfg = setup
    run = root / "served"
    model = yaml.safe_load(cfg.read_text())["model"]["init_from"]
    with running_server(model) as server:
        rc = kollm_main(["dpo", "--online", str(cfg), "--set", f"output_dir={run}", "--set", "dpo.online.reward=null",
                         "--set", f"dpo.online.judge={{endpoint: '{server.base_url}', model: '{server.model}'}}"])
        assert server.health()["status"] == "ok" if "status" in server.health() else True
    scores = rows(run / "round-0" / "scores.jsonl")
    assert len(scores) == 8 * 3  # every sample was sent to the server and came back
    if all(s["score"] is None for s in scores):
        assert rc != 0  # no pair can be built: a clear failure, not an empty training run
    else:
        assert rc == 0
