"""Parity with lm-evaluation-harness 0.4.13 for DNA 1.0's BELEBELE (kor_Hang), KMMLU-Hard and
CSAT-QA (skipped where the `bench` extra is not installed): lm-eval's own task configs, pointed at
small rows in each release's schema and run through its Hugging Face back-end on the tiny
checkpoint, build exactly kollm's prompts and continuations (few-shot included), and the
log-likelihoods and accuracies are equal."""

import json
import os
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")

from kollm.eval.harness import EvalConfig, evaluate  # noqa: E402

BELEBELE = [{"link": f"l{i}", "question_number": i, "flores_passage": p, "question": q, "mc_answer1": a[0],
             "mc_answer2": a[1], "mc_answer3": a[2], "mc_answer4": a[3], "correct_answer_num": c,
             "dialect": "kor_Hang", "ds": "2023"}
            for i, (p, q, a, c) in enumerate([
                ("서울은 한국의 수도이다.", "한국의 수도는?", ["부산", "서울", "대구", "인천"], "2"),
                ("사과는 빨갛다.", " 사과의 색은? ", ["파랑", "초록", "빨강", "검정"], "3"),
                ("The cat sat on the mat.", "Where did the cat sit?", ["mat", "bed", "roof", "car"], "1")])]
KMMLU_HARD = "question,answer,A,B,C,D,Category,Human Accuracy\n" + "".join(
    f"{q},{a},{o},math,0.3\n" for q, a, o in [(" 1+1은? ", 2, "1,2,3,4"), ("2+2는?", 4, "1,2,3,4"),
                                              ("3+3은?", 1, "6,5,4,3")])
KMMLU_DEV = "question,answer,A,B,C,D,Category,Human Accuracy\n0+1은?,1,1,2,3,4,math,0.9\n"
CSATQA = [{"question": q, "context": c, **{f"option#{i}": f"{o}{i}" for i in range(1, 6)}, "gold": g,
           "Category": "GR", "Human_Peformance": 0.5}
          for q, c, o, g in [("밑줄 친 말의 뜻은?", "지문 하나.", "선택", 3), ("맞춤법이 옳은 것은?", "지문 둘.", "보기", 5)]]

TASKS = {  # kollm task -> (lm-eval yaml under lm_eval/tasks, dataset builder, data files by split, shots)
    "belebele_ko": ("belebele/belebele_kor_Hang.yaml", "json", {"test": "belebele/kor_Hang.jsonl"}, 1),
    "kmmlu_hard": ("kmmlu/hard/kmmlu_hard_math.yaml", "csv",
                   {"test": "KMMLU-HARD/data/math-hard-test.csv", "dev": "KMMLU-HARD/data/math-hard-dev.csv"}, 1),
    "csatqa": ("csatqa/csatqa_gr.yaml", "json", {"test": "csatqa/csatqa.jsonl"}, 0),
}


@pytest.fixture(scope="module")
def runs(model_dir, tmp_path_factory):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data = tmp_path_factory.mktemp("dna_data")
    for rel, text in [("belebele/kor_Hang.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in BELEBELE)),
                      ("KMMLU-HARD/data/math-hard-test.csv", KMMLU_HARD),
                      ("KMMLU-HARD/data/math-hard-dev.csv", KMMLU_DEV),
                      ("csatqa/csatqa.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in CSATQA))]:
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_text(text, encoding="utf-8")
    inc = tmp_path_factory.mktemp("tasks")
    tm_names = {}
    for task, (yaml, builder, files, _) in TASKS.items():
        src = Path(lm_eval.__file__).parent / "tasks" / yaml
        splits = "".join(f"    {s}: {data / f}\n" for s, f in files.items())
        name = f"{task}_kollm_parity"
        (inc / f"{name}.yaml").write_text(
            f"include: {src}\ntask: {name}\ndataset_path: {builder}\ndataset_name: null\ndataset_kwargs:\n"
            f"  data_files:\n{splits}validation_split: null\ntraining_split: null\ntag: []\n", encoding="utf-8")
        tm_names[task] = name
    tm = TaskManager(include_path=str(inc))
    out = {}
    for task, (_, _, _, shots) in TASKS.items():
        r = simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=[tm_names[task]],
                            task_manager=tm, num_fewshot=shots, batch_size=4, device="cpu", log_samples=True,
                            verbosity="ERROR")
        out[task] = (r["results"][tm_names[task]], sorted(r["samples"][tm_names[task]], key=lambda s: s["doc_id"]))
    return out, data


@pytest.mark.parametrize("task", list(TASKS))
def test_same_requests_loglikelihoods_and_accuracy(task, runs, local_lm):
    out, data = runs
    ref, samples = out[task]
    ours = evaluate(local_lm, [(task, TASKS[task][3])], EvalConfig(data_dir=str(data)), log=lambda m: None)
    records = ours["samples"][task]
    assert len(records) == len(samples)
    for rec, s in zip(records, samples):
        assert rec["prompt"] == s["arguments"][0][0]  # the same prompt text, few-shot examples included
        assert rec["continuations"] == [a[1] for a in s["arguments"]]
        for (ll, greedy), (rll, rgreedy) in zip(rec["responses"], s["filtered_resps"]):
            assert abs(ll - rll) < 1e-3 and greedy == rgreedy
    assert ours["results"][task]["metrics"]["acc"]["value"] == pytest.approx(ref["acc,none"])
    if "acc_norm,none" in ref:
        assert ours["results"][task]["metrics"]["acc_norm"]["value"] == pytest.approx(ref["acc_norm,none"])
