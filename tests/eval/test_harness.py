"""The harness end to end: every request reaches the model once, per-item metrics aggregate to
known values, results.json holds summaries and per-item records, suites expand, and the CLI
runs a real tiny checkpoint with cross-lingual consistency."""

import json

import pytest

from kollm.cli import main
from kollm.eval.harness import EvalConfig, evaluate, write_results
from kollm.eval.suites import SUITES, expand
from kollm.eval.task import task_names


class Oracle:
    """Scores the gold continuation highest for the first `right` items of each task, the
    first wrong choice otherwise; generation answers "#### 72"."""

    name = "oracle"

    def __init__(self, gold_conts):
        self.gold = gold_conts
        self.calls = []

    def loglikelihood(self, pairs):
        self.calls.append(len(pairs))
        return [(0.0 if (c, x) in self.gold else -10.0 - len(x), False) for c, x in pairs]

    def generate(self, reqs):
        self.calls.append(len(reqs))
        return [" 48 + 24 = 72\n#### 72" for _ in reqs]


def test_evaluate_known_accuracy_and_records(fixtures, tmp_path):
    from kollm.eval.task import get_task

    copa = get_task("kobest_copa")
    items = copa.load(fixtures)
    # gold for items 0..3, a wrong choice for 4..5 → acc 4/6
    gold = {copa.requests(it)[it["gold"] if i < 4 else 1 - it["gold"]].args for i, it in enumerate(items)}
    model = Oracle(gold)
    res = evaluate(model, ["kobest_copa", ("gsm8k", 0)], EvalConfig(data_dir=str(fixtures)), log=lambda m: None)
    assert model.calls == [12, 5]  # one batched call per request kind
    acc = res["results"]["kobest_copa"]["metrics"]["acc"]
    assert acc["value"] == pytest.approx(4 / 6) and acc["n"] == 6
    assert acc["stderr"] == pytest.approx(((4 / 6 * 2 / 6) * 6 / 5 / 6) ** 0.5)
    gsm = res["results"]["gsm8k"]["metrics"]
    assert gsm["exact_match_strict"]["value"] == 0.2  # only item 0's answer is 72
    rec = res["samples"]["kobest_copa"][0]
    assert rec["target"] == items[0]["gold"] and len(rec["responses"]) == 2 and rec["where"].endswith("row 0")
    path = write_results(res, tmp_path / "run")
    back = json.loads(path.read_text(encoding="utf-8"))
    assert back["results"]["kobest_copa"]["n"] == 6 and len(back["samples"]["gsm8k"]) == 5


def test_fewshot_and_limit(fixtures):
    model = Oracle(set())
    res = evaluate(model, [("kobest_sentineg", 2)], EvalConfig(data_dir=str(fixtures), limit=3), log=lambda m: None)
    r = res["results"]["kobest_sentineg"]
    assert r["n"] == 3 and r["num_fewshot"] == 2
    assert res["samples"]["kobest_sentineg"][0]["prompt"].count("긍부정:") == 3


def test_suites_expand():
    known = set(task_names())
    dna = expand("dna", known, log=lambda m: None)
    assert ("kmmlu", 5) in dna and ("math", 4) in dna and len(dna) == 14
    assert {("kmmlu_hard", 5), ("belebele_ko", 0), ("csatqa", 0), ("mmlu_pro", 5)} <= set(dna)
    notes = []
    trillion = expand("trillion,gsm8k:3", known, log=notes.append)
    assert ("global_mmlu_ko", 5) in trillion and trillion[-1] == ("gsm8k", 3)
    assert all(name in known for name, _ in trillion)
    assert len(trillion) + len(notes) == len(SUITES["trillion"]) + 1
    with pytest.raises(KeyError, match="unknown task or suite 'nope'"):
        expand("nope", known)


def test_cli_on_tiny_checkpoint_with_consistency(model_dir, fixtures, tmp_path, capsys):
    rc = main(["eval", "--model", str(model_dir), "--tasks", "kobest_copa,global_mmlu_en:0,global_mmlu_ko:0",
               "--data-dir", str(fixtures), "--out", str(tmp_path), "--json", "--device", "cpu",
               "--consistency", "global_mmlu_en:global_mmlu_ko"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["results"]) == {"kobest_copa", "global_mmlu_en", "global_mmlu_ko"}
    c = out["consistency"]["global_mmlu_en:global_mmlu_ko"]
    assert c["pairs"] == 9 and c["unpaired"] == {"en": 1, "ko": 0}
    saved = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    en = {r["pair_id"]: r["metrics"]["acc"] for r in saved["samples"]["global_mmlu_en"]}
    ko = {r["pair_id"]: r["metrics"]["acc"] for r in saved["samples"]["global_mmlu_ko"]}
    both = [k for k in ko if en[k] == 1.0]
    assert c["P(ko✓|en✓)"]["of"] == len(both) and c["P(ko✓|en✓)"]["count"] == sum(ko[k] for k in both)


def test_cli_errors_are_one_line(model_dir, tmp_path, capsys):
    assert main(["eval", "--model", str(model_dir), "--tasks", "kobest_boolq", "--data-dir", str(tmp_path)]) == 1
    assert "kobest_v1" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path), "--tasks", "kobest_boolq", "--data-dir", str(tmp_path)]) == 1
    assert "no config.json" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path), "--tasks", "no_task"]) == 1
    capsys.readouterr()


def test_cli_consistency_refuses_tasks_without_a_parallel_key(model_dir, fixtures, capsys):
    assert main(["eval", "--model", str(model_dir), "--tasks", "kobest_copa,global_mmlu_ko:0", "--data-dir",
                 str(fixtures), "--limit", "3", "--consistency", "kobest_copa:global_mmlu_ko"]) == 1
    assert "'kobest_copa' has no parallel key" in capsys.readouterr().err


def test_results_json_is_strict_json(tmp_path):
    path = write_results({"results": {"t": {"metrics": {"acc": {"value": 1.0, "stderr": float("nan"), "n": 1}}}}},
                         tmp_path)
    assert '"stderr": null' in path.read_text(encoding="utf-8")


def test_cli_task_args_reach_niah_and_write_the_heatmap(model_dir, tmp_path, capsys):
    from tokenizers import Tokenizer

    rc = main(["eval", "--model", str(model_dir), "--tasks", "niah_en", "--device", "cpu", "--out", str(tmp_path),
               "--task-arg", "niah_en:lengths=[200, 400]", "--task-arg", "niah_en:depths=[0, 100]", "--json"])
    assert rc == 0
    metrics = json.loads(capsys.readouterr().out)["results"]["niah_en"]["metrics"]
    assert {k for k in metrics if k.startswith("acc@")} == {"acc@200@0", "acc@200@100", "acc@400@0", "acc@400@100"}
    assert (tmp_path / "niah_en.png").read_bytes()[:4] == b"\x89PNG"
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))  # lengths are the model's tokens
    for rec in json.loads((tmp_path / "results.json").read_text())["samples"]["niah_en"]:
        n = len(tok.encode(rec["prompt"], add_special_tokens=False).ids)
        length = int(next(k for k in rec["metrics"] if k.startswith("acc@")).split("@")[1])
        assert 0.8 * length <= n <= length
    # past the checkpoint's context (max_position_embeddings 4096), a typo'd key, a task not run
    for bad, msg in (("niah_en:lengths=[8192]", "8192"), ("niah_en:lenghts=[200]", "unknown option(s) ['lenghts']"),
                     ("kobest_copa:x=1", "not in --tasks"), ("niah_en", "TASK:KEY=VALUE")):
        assert main(["eval", "--model", str(model_dir), "--tasks", "niah_en", "--task-arg", bad]) == 1
        assert msg in capsys.readouterr().err


def test_a_task_with_no_usable_items_is_an_error():
    from kollm.eval.tasks.common import MultipleChoiceTask

    class AllMalformed(MultipleChoiceTask):
        name = "all_malformed"

        def load(self, data_dir):
            self.bad_rows.append("x.jsonl:1: bad_json")
            return []

    with pytest.raises(ValueError, match=r"all_malformed: no usable items .*1 malformed rows; first: x.jsonl:1"):
        evaluate(None, [AllMalformed()], log=lambda m: None)


def test_requested_shots_are_never_dropped_silently(fixtures):
    from kollm.eval.task import Request, Task

    class NoShots(Task):
        name = "no_shots"

        def load(self, data_dir):
            return [{"q": "1 + 1 =", "gold": 0}]

        def requests(self, item, fewshot=()):
            return [Request("loglikelihood", (item["q"], " 2"))]

        def process(self, item, results):
            return {"acc": 1.0}

    with pytest.raises(ValueError, match=r"no_shots: 3-shot requested but it has no items to draw shots from"):
        evaluate(Oracle(set()), [(NoShots(), 3)], EvalConfig(data_dir=str(fixtures)), log=lambda m: None)
    res = evaluate(Oracle(set()), [(NoShots(), 0)], EvalConfig(data_dir=str(fixtures)), log=lambda m: None)
    assert res["results"]["no_shots"]["num_fewshot"] == 0
    # GPQA, the suite's gpqa_main:4 case: shots come from its own rows, the count is what was asked
    res = evaluate(Oracle(set()), [("gpqa_main", 2)], EvalConfig(data_dir=str(fixtures)), log=lambda m: None)
    assert res["results"]["gpqa_main"]["num_fewshot"] == 2
    assert all(r["prompt"].count("Question: ") == 3 for r in res["samples"]["gpqa_main"])
