"""Parity with lm-evaluation-harness (skipped where the `bench` extra is not installed): lm-eval's
own KoBEST and MMLU task configs, pointed at the same fixture rows and run through its Hugging
Face back-end on the same tiny checkpoint, build exactly kollm's requests (prompts included),
and kollm's per-request log-likelihoods and accuracies equal lm-eval's."""

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")

from kollm.eval.harness import EvalConfig, evaluate  # noqa: E402

TASKS = {  # kollm task -> (lm-eval yaml relative to lm_eval/tasks, data files by split, shots)
    "kobest_copa": ("kobest/kobest_copa.yaml", {"test": "kobest_v1/copa/test-00000-of-00001.parquet"}, 0),
    "kobest_boolq": ("kobest/kobest_boolq.yaml", {"test": "kobest_v1/boolq/test-00000-of-00001.parquet"}, 0),
    "kobest_hellaswag": ("kobest/kobest_hellaswag.yaml",
                         {"test": "kobest_v1/hellaswag/test-00000-of-00001.parquet"}, 0),
    "mmlu": ("mmlu/default/mmlu_abstract_algebra.yaml", {"test": "aa/test.parquet", "dev": "aa/dev.parquet"}, 2),
}


@pytest.fixture(scope="module")
def lm_eval_runs(model_dir, tmp_path_factory):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    fixtures = Path(__file__).parent / "fixtures"
    tmp = tmp_path_factory.mktemp("lm_eval")
    # MMLU: lm-eval's config is per subject; kollm's data dir gets the same subject only.
    for split in ("test", "dev"):
        table = pq.read_table(fixtures / f"mmlu/all/{split}-00000-of-00001.parquet")
        rows = [r for r in table.to_pylist() if r["subject"] == "abstract_algebra"]
        for d in (tmp / "aa", tmp / "kollm" / "mmlu" / "all"):
            d.mkdir(parents=True, exist_ok=True)
            import pyarrow as pa

            pq.write_table(pa.Table.from_pylist(rows),
                           d / (f"{split}.parquet" if d.name == "aa" else f"{split}-00000-of-00001.parquet"))
    inc = tmp / "tasks"
    inc.mkdir()
    names = {}
    for task, (yaml, files, _) in TASKS.items():
        src = Path(lm_eval.__file__).parent / "tasks" / yaml
        data = "".join(f"    {s}: {(fixtures / f) if not f.startswith('aa/') else tmp / f}\n" for s, f in files.items())
        name = f"{task}_kollm_parity"
        (inc / f"{name}.yaml").write_text(
            f"include: {src}\ntask: {name}\ndataset_path: parquet\ndataset_name: null\ndataset_kwargs:\n"
            f"  data_files:\n{data}validation_split: null\ntraining_split: null\ntag: []\n", encoding="utf-8")
        names[task] = name
    tm = TaskManager(include_path=str(inc))
    out = {}
    for task, (_, _, shots) in TASKS.items():
        r = simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=[names[task]],
                            task_manager=tm, num_fewshot=shots, batch_size=4, device="cpu", log_samples=True,
                            verbosity="ERROR")
        out[task] = (r["results"][names[task]], sorted(r["samples"][names[task]], key=lambda s: s["doc_id"]))
    return out, tmp / "kollm"


@pytest.mark.parametrize("task", list(TASKS))
def test_same_requests_loglikelihoods_and_accuracy(task, lm_eval_runs, local_lm):
    runs, kollm_mmlu = lm_eval_runs
    ref, samples = runs[task]
    fixtures = Path(__file__).parent / "fixtures"
    data_dir = kollm_mmlu if task == "mmlu" else fixtures
    ours = evaluate(local_lm, [(task, TASKS[task][2])], EvalConfig(data_dir=str(data_dir)), log=lambda m: None)
    records = ours["samples"][task]
    assert len(records) == len(samples)
    for rec, s in zip(records, samples):
        ctx = [a[0] for a in s["arguments"]]
        conts = [a[1] for a in s["arguments"]]
        assert rec["prompt"] == ctx[0]  # the same prompt text, few-shot examples included
        assert rec["continuations"] == conts
        for (ll, greedy), (rll, rgreedy) in zip(rec["responses"], s["filtered_resps"]):
            assert abs(ll - rll) < 1e-3 and greedy == rgreedy
    assert ours["results"][task]["metrics"]["acc"]["value"] == pytest.approx(ref["acc,none"])
    if "acc_norm,none" in ref:
        assert ours["results"][task]["metrics"]["acc_norm"]["value"] == pytest.approx(ref["acc_norm,none"])
