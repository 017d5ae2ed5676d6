"""Evaluation speed: kollm's harness against lm-evaluation-harness's Hugging Face back-end, same
model, same rows, same prompts (lm-eval's own KoBEST, MMLU and GSM8K task configs pointed at local
files): multiple choice (seconds, ratio, the largest per-request log-likelihood gap, the same
prompt and pick item by item) and GSM8K generate_until (ratio, generations compared item by item).

    .venv/bin/python bench/bench_eval.py [--tasks kobest_boolq,...,kobest_wic] [--limit 200] [--mmlu-subjects 4]
        [--dim 512 --layers 8 | --model DIR] [--device cpu] [--threads 1] [--repeats 1]
        [--gen-limit 100 (0: no generation) --gen-shots N --gen-max-tokens 256 --gen-only]

Needs the `bench` extra (lm_eval, accelerate) and the shared dev data. The model is a random
Llama of the given size with a byte-level BPE trained on the KoBEST train split, written once
to a temp dir, or `--model DIR`, a real checkpoint directory (Hugging Face layout); both harnesses
load it from there. Each harness gets all multiple-choice tasks in one call (KoBEST 0-shot, the
first `--limit` dev items each; MMLU 4-shot on the first `--mmlu-subjects` subjects' dev items),
and its time includes its model load and its own request building (what a user waits for);
lm-eval's imports and one-time warm-up are excluded; with `--repeats` > 1 runs are interleaved
and the best is kept (shared machines drift). "ratio" is wall time lm-eval / kollm; "cpu ratio"
the same with process CPU time, which other jobs on a shared machine disturb less. The last line
on stdout is one JSON object: mc_ratio and mc_cpu_ratio, gen_ratio and gen_cpu_ratio (GSM8K, one
run each, null with --gen-limit 0), identical (every item's prompt and predicted choice agree,
every log-likelihood within --tol, every generation equal), each harness's peak RSS during its
own runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval-dev" / "kobest"
HF_NAMES = {"kobest_boolq": "boolq", "kobest_copa": "copa", "kobest_hellaswag": "hellaswag",
            "kobest_sentineg": "sentineg", "kobest_wic": "wic"}


def build_model(out: Path, dim: int, layers: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    texts = []
    for task in ("BoolQ", "COPA", "HellaSwag"):
        with open(SHARED / task / "train.tsv", encoding="utf-8", newline="") as f:
            texts += ["\t".join(r) for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=8000, special_tokens=["<pad>", "<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=dim, intermediate_size=dim * 8 // 3,
                      num_hidden_layers=layers, num_attention_heads=dim // 64, num_key_value_heads=dim // 128,
                      max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)


def hf_layout(task: str, limit: int, out: Path) -> Path:
    """The KoBEST dev rows in skt/kobest_v1's schema as one parquet file (what lm-eval reads)."""
    from kollm.eval.task import get_task

    items = get_task(task).load(SHARED.parent)[:limit]
    name = HF_NAMES[task]
    rows = {
        "boolq": lambda it: {"paragraph": it["paragraph"], "question": it["question"], "label": it["gold"]},
        "copa": lambda it: {"premise": it["premise"], "question": it["question"], "alternative_1": it["choices"][0],
                            "alternative_2": it["choices"][1], "label": it["gold"]},
        "hellaswag": lambda it: {"context": it["context"], **{f"ending_{i + 1}": c for i, c in enumerate(it["choices"])},
                                 "label": it["gold"]},
        "sentineg": lambda it: {"sentence": it["sentence"], "label": it["gold"]},
        "wic": lambda it: {"word": it["word"], "context_1": it["context_1"], "context_2": it["context_2"],
                           "label": it["gold"]},
    }[name]
    path = out / "kobest_v1" / name / "test-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([rows(it) for it in items]), path)
    return path


def lm_eval_yaml(task: str, parquet: Path, include_dir: Path) -> str:
    import lm_eval

    src = Path(lm_eval.__file__).parent / "tasks" / "kobest" / f"{task}.yaml"
    (include_dir / f"{task}_local.yaml").write_text(
        f"include: {src}\ntask: {task}_local\ndataset_path: parquet\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    test: {parquet}\nvalidation_split: null\ntraining_split: null\n"
        "tag: []\n", encoding="utf-8")
    return f"{task}_local"


MMLU_DEV = SHARED.parent / "mmlu" / "dev"


def mmlu_layout(subjects: int, out: Path, include_dir: Path) -> list[str]:
    """The first `subjects` MMLU subjects' dev rows (5 each; the shared copy has no test split),
    scored 4-shot from the same dev split on both sides, the shots being the subject's other items:
    kollm reads them as `mmlu/all/dev-*.parquet`, lm-eval through its own per-subject config with
    test_split and fewshot_split both dev (its first_n sampler then skips the item itself, as kollm
    does). Returns lm-eval's task names, in kollm's item order."""
    from kollm.eval.task import get_task

    task = get_task("mmlu")
    task.bad_rows = []
    items = task._load(SHARED.parent, "dev")
    names = sorted({it["subject"] for it in items})[:subjects]
    rows = [{"question": it["question"], "subject": it["subject"], "choices": it["options"], "answer": it["gold"]}
            for name in names for it in items if it["subject"] == name]
    (out / "mmlu" / "all").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "mmlu" / "all" / "dev-00000-of-00001.parquet")
    import lm_eval

    tasks = []
    for name in names:
        path = out / "mmlu_lm_eval" / f"{name}.parquet"
        path.parent.mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pylist([r for r in rows if r["subject"] == name]), path)
        src = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default" / f"mmlu_{name}.yaml"
        (include_dir / f"mmlu_{name}_local.yaml").write_text(
            f"include: {src}\ntask: mmlu_{name}_local\ndataset_path: parquet\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    dev: {path}\ntest_split: dev\nfewshot_split: dev\n"
            "num_fewshot: 4\ntag: []\n", encoding="utf-8")
        tasks.append(f"mmlu_{name}_local")
    return tasks


class PeakRSS:
    """The largest resident set size seen while the block runs (sampled every 20 ms): each harness's
    own peak, where ru_maxrss would give the process's over both."""

    def __enter__(self):
        import gc
        import threading

        gc.collect()
        self.peak, self._stop = 0, threading.Event()

        def watch():
            page = os.sysconf("SC_PAGE_SIZE")
            while True:
                with open("/proc/self/statm") as f:
                    self.peak = max(self.peak, int(f.read().split()[1]) * page)
                if self._stop.wait(0.02):
                    return

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def gb(self) -> float:
        return self.peak / 2**30


GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval-dev" / "gsm8k" / "train.jsonl"


def bench_gen(model_dir: Path, tmp: Path, args) -> dict:
    """GSM8K generate_until, both harnesses on the same rows: the shared copy holds only the train
    split, so both evaluate its first `--gen-limit` rows with shots drawn from all of it (the item
    itself excluded), lm-eval through its own gsm8k config with the split names pointed there."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from kollm.eval.harness import EvalConfig, evaluate
    from kollm.eval.models import LocalLM
    from kollm.eval.task import get_task

    data = tmp / "gen" / "gsm8k"
    data.mkdir(parents=True)
    (data / "train.jsonl").symlink_to(GSM8K)
    inc = tmp / "gen_tasks"
    inc.mkdir()
    import lm_eval

    src = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"
    (inc / "gsm8k_local.yaml").write_text(
        f"include: {src}\ntask: gsm8k_local\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    train: {GSM8K}\ntest_split: train\nfewshot_split: train\n"
        "training_split: train\ntag: []\n", encoding="utf-8")
    tm = TaskManager(include_path=str(inc))
    shots = args.gen_shots
    t0, c0 = time.perf_counter(), time.process_time()
    with PeakRSS() as rss_ref:
        ref = simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=["gsm8k_local"],
                              task_manager=tm, num_fewshot=shots, batch_size=args.lm_eval_batch, device=args.device,
                              limit=args.gen_limit, log_samples=True, verbosity="ERROR",
                              gen_kwargs=f"max_gen_toks={args.gen_max_tokens}")
    t_ref, c_ref = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    with PeakRSS() as rss_ours:
        lm = LocalLM(model_dir, device=args.device)
        task = get_task("gsm8k")
        task.max_new_tokens = args.gen_max_tokens
        ours = evaluate(lm, [task], EvalConfig(data_dir=str(tmp / "gen"), num_fewshot=shots,
                                                  limit=args.gen_limit), log=lambda m: None)
    t_ours, c_ours = time.perf_counter() - t0, time.process_time() - c0
    # one record per doc and filter (strict-match, flexible-extract): the first of each doc
    samples = sorted({s["doc_id"]: s for s in reversed(ref["samples"]["gsm8k_local"])}.values(),
                     key=lambda s: s["doc_id"])
    recs = ours["samples"]["gsm8k"]
    same_prompt = sum(s["arguments"][0][0] == r["prompt"] for s, r in zip(samples, recs))
    same_text = sum(s["resps"][0][0] == r["responses"][0] for s, r in zip(samples, recs))
    n = len(recs)
    em_k = ours["results"]["gsm8k"]["metrics"]["exact_match_flexible"]["value"]
    em_l = ref["results"]["gsm8k_local"]["exact_match,flexible-extract"]
    print(f"gsm8k generate_until, {n} items, {shots if shots is not None else 5}-shot, greedy, {args.gen_max_tokens} new tokens: "
          f"kollm {t_ours:.1f} s (cpu {c_ours:.1f}), lm-eval {t_ref:.1f} s (cpu {c_ref:.1f}), "
          f"ratio {t_ref / t_ours:.2f} (cpu {c_ref / c_ours:.2f}); same prompts {same_prompt}/{n}, same "
          f"generations {same_text}/{n}; flexible EM kollm {em_k:.4f} / lm-eval {em_l:.4f}", flush=True)
    for s, r in zip(samples, recs):
        if s["resps"][0][0] != r["responses"][0]:
            print(f"  differs, item {r['index']}: kollm {r['responses'][0][:120]!r}\n"
                  f"                  lm-eval {s['resps'][0][0][:120]!r}")
    return {"gen_ratio": round(t_ref / t_ours, 3), "gen_cpu_ratio": round(c_ref / c_ours, 3),
            "gen_kollm_s": round(t_ours, 2), "gen_lm_eval_s": round(t_ref, 2), "gen_items": n,
            "gen_same": same_text == n and same_prompt == n, "gen_kollm_peak_rss_gb": round(rss_ours.gb, 2),
            "gen_lm_eval_peak_rss_gb": round(rss_ref.gb, 2)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", default="kobest_boolq,kobest_copa,kobest_hellaswag,kobest_sentineg,kobest_wic")
    p.add_argument("--limit", type=int, default=200, help="items per KoBEST task")
    p.add_argument("--mmlu-subjects", type=int, default=4, help="MMLU subjects, 5 dev items each, 4-shot (0: none)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--model", default=None, help="a real checkpoint directory instead of the random Llama")
    p.add_argument("--tol", type=float, default=1e-3, help="largest |dLL| per request that counts as identical")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lm-eval-batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads for both harnesses (1: least disturbed by other jobs on a shared box)")
    p.add_argument("--gen-limit", type=int, default=100, help="GSM8K items for the generation bench (0: skip it)")
    p.add_argument("--gen-shots", type=int, default=None, help="GSM8K shots (None: the task's 5)")
    p.add_argument("--gen-max-tokens", type=int, default=256, help="new tokens per GSM8K answer, both harnesses")
    p.add_argument("--gen-only", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from kollm.eval.harness import EvalConfig, evaluate
    from kollm.eval.models import LocalLM

    tmp = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    if args.model:
        model_dir = Path(args.model)
    else:
        model_dir = tmp / "model"
        build_model(model_dir, args.dim, args.layers)
    desc = model_dir if args.model else f"Llama d={args.dim} L={args.layers}"
    print(f"model: {desc}, device {args.device}, threads {torch.get_num_threads()}")
    out: dict = {"model": str(desc)}
    identical = True
    if not args.gen_only:
        # Both harnesses get every task in one call, as a user runs a suite (one model load, all
        # requests batched together); the KoBEST tasks 0-shot, MMLU 4-shot (the subject's other dev items).
        inc = tmp / "lm_eval_tasks"
        inc.mkdir()
        ours_tasks = [t for t in args.tasks.split(",") if t]
        ref_names = {t: [lm_eval_yaml(t, hf_layout(t, args.limit, tmp), inc)] for t in ours_tasks}
        if args.mmlu_subjects:
            ref_names["mmlu"] = mmlu_layout(args.mmlu_subjects, tmp, inc)
            ours_tasks.append(("mmlu", 4))
        tm = TaskManager(include_path=str(inc))
        all_ref = [n for names in ref_names.values() for n in names]
        # lm-eval's one-time costs (metric registry look-ups, first model load) out of the timing
        simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=all_ref[:1],
                        task_manager=tm, batch_size=args.lm_eval_batch, device=args.device, limit=2,
                        verbosity="ERROR")
        t_ref, c_ref, t_ours, c_ours = [], [], [], []
        peak = {"lm_eval_peak_rss_gb": 0.0, "kollm_peak_rss_gb": 0.0}
        for _ in range(args.repeats):  # interleaved, best of N: the machine's load drifts between runs
            t0, c0 = time.perf_counter(), time.process_time()
            with PeakRSS() as rss:
                ref = simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=all_ref,
                                      task_manager=tm, batch_size=args.lm_eval_batch, device=args.device,
                                      log_samples=True, verbosity="ERROR")
            t_ref.append(time.perf_counter() - t0)
            c_ref.append(time.process_time() - c0)
            peak["lm_eval_peak_rss_gb"] = max(peak["lm_eval_peak_rss_gb"], round(rss.gb, 2))
            t0, c0 = time.perf_counter(), time.process_time()
            with PeakRSS() as rss:
                lm = LocalLM(model_dir, device=args.device)
                ours = evaluate(lm, ours_tasks, EvalConfig(data_dir=str(tmp)), log=lambda m: None)
            t_ours.append(time.perf_counter() - t0)
            c_ours.append(time.process_time() - c0)
            peak["kollm_peak_rss_gb"] = max(peak["kollm_peak_rss_gb"], round(rss.gb, 2))
        print(f"{'task':<18} {'items':>5} {'requests':>8} {'max|dLL|':>9} {'same pick':>9} {'acc kollm / lm-eval':>20}")
        for task, names in ref_names.items():
            samples = [s for n in names for s in sorted(ref["samples"][n], key=lambda s: s["doc_id"])]
            recs = ours["samples"][task]
            ref_ll = [r[0] for s in samples for r in s["filtered_resps"]]
            our_ll = [r[0] for rec in recs for r in rec["responses"]]
            dmax = max(abs(a - b) for a, b in zip(ref_ll, our_ll))
            pick = lambda lls: max(range(len(lls)), key=lls.__getitem__)  # noqa: E731
            same = sum(pick([r[0] for r in s["filtered_resps"]]) == pick([r[0] for r in rec["responses"]])
                       and s["arguments"][0][0] == rec["prompt"] for s, rec in zip(samples, recs))
            acc_k = ours["results"][task]["metrics"]["acc"]["value"]
            acc_l = sum(s["acc"] for s in samples) / len(samples)
            identical &= same == len(recs) == len(samples) and len(ref_ll) == len(our_ll) and dmax <= args.tol
            print(f"{task:<18} {len(recs):>5} {len(our_ll):>8} {dmax:>9.2e} {same:>4}/{len(recs):<4} "
                  f"{acc_k:>10.4f} / {acc_l:.4f}", flush=True)
        t_ref, c_ref, t_ours, c_ours = min(t_ref), min(c_ref), min(t_ours), min(c_ours)
        print(f"all tasks: kollm {t_ours:.1f} s (cpu {c_ours:.1f}), lm-eval {t_ref:.1f} s (cpu {c_ref:.1f}): "
              f"ratio {t_ref / t_ours:.2f} (cpu {c_ref / c_ours:.2f})", flush=True)
        out.update({"mc_ratio": round(t_ref / t_ours, 3), "mc_cpu_ratio": round(c_ref / c_ours, 3),
                    "kollm_s": round(t_ours, 2), "lm_eval_s": round(t_ref, 2), "kollm_cpu_s": round(c_ours, 2),
                    "lm_eval_cpu_s": round(c_ref, 2), "mc_items": sum(r["n"] for r in ours["results"].values()),
                    **peak})
    gen = bench_gen(model_dir, tmp, args) if args.gen_limit else {"gen_ratio": None}
    identical &= gen.get("gen_same", True)
    # ru_maxrss: the process's peak (KiB on Linux) over both harnesses
    print(json.dumps({**out, **gen, "identical": identical,
                      "process_peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))


if __name__ == "__main__":
    main()
