"""`kollm eval`: run tasks or suites on a checkpoint directory or an OpenAI-compatible endpoint,
write results.json, print a table (or the JSON), and optionally cross-lingual consistency.

    kollm eval --model out/ckpt --tasks kobest_boolq,mmlu:5 --data-dir data/eval --out runs/eval
    kollm eval --model http://127.0.0.1:8000 --endpoint-model m --tasks gsm8k_cot --data-dir D --json
    kollm eval --model M --tasks global_mmlu_en,global_mmlu_ko --consistency global_mmlu_en:global_mmlu_ko
    kollm eval --model M --tasks niah_ko --task-arg "niah_ko:lengths=[4096,32768]" --out runs/niah
    kollm eval --model M --tasks mt_bench --task-arg mt_bench:judge_url=http://judge:8000/v1 ...

`--task-arg TASK:KEY=VALUE` passes a task option (VALUE read as YAML: numbers, lists, strings).
NIAH tasks on a checkpoint directory count lengths in its tokenizer's tokens and stop at its
context length unless told otherwise; with --out, each NIAH task's heat map is written beside
results.json as niah_TASK.png. `--dry-run` prints items, requests and approximate tokens per task and
the forward FLOPs (kollm.plan), from the data when --data-dir has them, else published sizes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from kollm.argtypes import nonnegative_int, positive_int
from kollm.eval.consistency import consistency, lang_of
from kollm.eval.harness import EvalConfig, evaluate, no_nan, summary_table, write_results
from kollm.eval.judge import ReplyCache
from kollm.eval.suites import SUITES, expand
from kollm.eval.task import get_task, task_names
from kollm.eval.tasks.judge_tasks import JudgeTask


def task_options(specs: list[str], tasks: set[str]) -> dict[str, dict]:
    """`TASK:KEY=VALUE` flags → {task: {key: value}}; a flag for a task not being run is an error
    (a typo would otherwise silently evaluate with defaults)."""
    out: dict[str, dict] = {}
    for spec in specs:
        task, _, kv = spec.partition(":")
        key, eq, value = kv.partition("=")
        if not task or not key or not eq:
            raise ValueError(f"--task-arg {spec!r}: expected TASK:KEY=VALUE")
        if task not in tasks:
            raise KeyError(f"--task-arg {spec!r}: task {task!r} is not in --tasks")
        out.setdefault(task, {})[key] = yaml.safe_load(value)
    return out


def niah_defaults(model_dir: str) -> dict:
    """Count NIAH lengths in the checkpoint's own tokens and refuse lengths past its context."""
    d, out = Path(model_dir), {}
    if (d / "tokenizer.json").is_file():
        out["tokenizer"] = str(d)
    cfg = d / "config.json"
    if cfg.is_file() and (n := json.loads(cfg.read_text()).get("max_position_embeddings")):
        out["max_length"] = int(n)
    return out


# Dry run without a task's data: tokens per example (question + answer) and per generated answer,
# stated assumptions (the dry run counts real tokens when --data-dir holds the task).
EXAMPLE_TOKENS, GENERATED_TOKENS = 256, 256


def _measure(task, shots: int | None, data_dir: str | None, limit: int | None, seed: int, count) -> dict | None:
    """Items, requests and tokens of one task as the harness would build them; None without its data."""
    import random

    try:
        items = task.load(Path(data_dir) if data_dir else None)
    except (FileNotFoundError, OSError, ValueError, KeyError):
        return None
    if not items:
        return None
    items = items[:limit] if limit else items
    k = shots if shots is not None else task.num_fewshot
    try:
        pool = task.few_shot_items(Path(data_dir) if data_dir else None) if k > 0 else []
    except (FileNotFoundError, OSError, ValueError, KeyError):
        pool = []
    rng, out = random.Random(seed), {"items": len(items), "requests": 0, "tokens": 0, "generated": 0}
    for item in items:
        try:
            reqs = task.requests(item, task.select_fewshot(item, pool, k, rng) if pool else [])
        except (KeyError, ValueError, TypeError, IndexError):
            continue
        for q in reqs:
            out["requests"] += 1
            out["tokens"] += sum(count(a) for a in q.args)
            out["generated"] += q.max_new_tokens if q.kind == "generate" else 0
    return out


def dry_run(specs: list[tuple[str, int | None]], args, options: dict | None = None) -> dict:
    """The kollm.plan dict of an evaluation: per task its items, requests and (approximate) tokens,
    and the forward FLOPs on the model (the checkpoint's config.json, else --preset): prompt and
    continuation tokens at the MFU, generated tokens at the sampling MFU. Judged tasks' judge calls
    are external and counted as requests only."""
    from kollm.eval.suites import SIZES
    from kollm.model.config import get_preset
    from kollm.plan import human, make, part

    model_dir = Path(args.model) if args.model and not args.model.startswith("http") else None
    mc = None
    if model_dir is not None and (model_dir / "config.json").is_file():
        from kollm.model.hf import config_from_hf, read_config

        mc = config_from_hf(read_config(model_dir))
    elif args.preset:
        mc = get_preset(args.preset)
    count, tok_note = (lambda s: max(1, len(s) // 4)), "tokens ≈ characters / 4"
    if model_dir is not None and (model_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tk = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        count, tok_note = (lambda s: len(tk.encode(s, add_special_tokens=False).ids)), "tokens counted"
    rows, notes, parts, options = [], [], [], options or {}
    prompt_tokens = gen_tokens = requests = 0
    for name, shots in specs:
        try:
            task = get_task(name, **options.get(name, {}))
        except (ValueError, KeyError, RuntimeError) as e:  # e.g. a code task with no sandbox here
            task = None
            notes.append(f"{name}: {e}")
        k = shots if shots is not None else task.num_fewshot if task is not None else 0
        m = _measure(task, shots, args.data_dir, args.limit, args.seed, count) if task is not None else None
        if m is None and name in SIZES:
            n, choices, turns = SIZES[name]
            n = min(n, args.limit) if args.limit else n
            reqs = n * (choices or turns)
            m = {"items": n, "requests": reqs, "tokens": reqs * (k + 1) * EXAMPLE_TOKENS,
                 "generated": 0 if choices else reqs * GENERATED_TOKENS, "source": "published size"}
        elif m is not None:
            m["source"] = tok_note
        if m is None:
            rows.append(f"{name:<22}{'?':>9}  no data in {args.data_dir} and no published size here: not counted")
            continue
        prompt_tokens, gen_tokens, requests = prompt_tokens + m["tokens"], gen_tokens + m["generated"], \
            requests + m["requests"]
        rows.append(f"{name:<22}{m['items']:>9,}{m['requests']:>11,}{human(m['tokens']):>10}"
                    f"{human(m['generated']):>11}  {k}-shot, {m['source']}")
    head = f"{'task':<22}{'items':>9}{'requests':>11}{'tokens':>10}{'generated':>11}"
    if mc is not None:
        f = mc.flops_per_token(EXAMPLE_TOKENS)
        parts = [part("prompts and continuations", "forward", prompt_tokens, f),
                 part("generated tokens (upper bound)", "generate", gen_tokens, f)]
    else:
        notes.append("model shapes unknown (no config.json in --model, no --preset): FLOPs not planned")
    notes.append(f"without a task's data: {EXAMPLE_TOKENS} tokens per example × (shots + 1) per request and "
                 f"{GENERATED_TOKENS} generated per answer are assumed (approximate)")
    plan = make("eval", args, parts, notes=notes, requests=requests, tokens=prompt_tokens + gen_tokens)
    plan["text"] = "\n".join([head, *rows, f"{'total':<22}{'':>9}{requests:>11,}{human(prompt_tokens):>10}"
                                              f"{human(gen_tokens):>11}", plan["text"]])
    return plan


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kollm eval", description="Evaluate a model on benchmarks → results.json.")
    p.add_argument("--model", help="checkpoint directory (Hugging Face layout) or http(s)://host:port endpoint")
    p.add_argument("--tasks", help=f"comma-separated tasks or suites ({', '.join(SUITES)}); task:shots sets shots")
    p.add_argument("--data-dir", help="folder holding the benchmarks' files (HF layouts or original releases)")
    p.add_argument("--out", help="directory for results.json")
    p.add_argument("--num-fewshot", type=nonnegative_int, help="shots for every task (default: the task's or suite's)")
    p.add_argument("--limit", type=positive_int, help="first N items per task (N >= 1; default: all)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compile generation's decode step (default: on for CUDA, off on CPU)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: the checkpoint's")
    p.add_argument("--batch-tokens", type=positive_int, help="tokens per log-likelihood forward (default: 512 CPU, 16384 GPU)")
    p.add_argument("--endpoint-model", default="default", help="model name sent to the endpoint")
    p.add_argument("--system-prompt", help="generation tasks that use the chat template: a system turn before each "
                   "prompt (e.g. the GRPO run's data.system_prompt)")
    p.add_argument("--consistency", action="append", default=[], metavar="SRC_TASK:TGT_TASK",
                   help="cross-lingual consistency between two parallel tasks (repeatable)")
    p.add_argument("--metric", default=None, help="correctness metric for --consistency (default: acc or exact_match)")
    p.add_argument("--task-arg", action="append", default=[], metavar="TASK:KEY=VALUE",
                   help="a task option, VALUE as YAML, e.g. niah_en:lengths=[1024,4096] (repeatable)")
    p.add_argument("--allow-unsafe-code", action="store_true",
                   help="where no code sandbox works (bubblewrap, docs/sandbox.md), run humaneval/mbpp programs "
                        "UNSANDBOXED: model-written code could then read, change or delete your files")
    p.add_argument("--json", action="store_true", help="print results (without per-item records) as JSON")
    p.add_argument("--list", action="store_true", help="list tasks and suites")
    from kollm.plan import add_plan_args, emit

    add_plan_args(p, "print items, requests and approximate tokens per task, and the forward FLOPs, then exit")
    p.add_argument("--preset", help="dry run: the model's shapes when --model is not there yet (e.g. llama3.1-8b)")
    args = p.parse_args(argv)

    if args.list:
        print("tasks: " + ", ".join(task_names()))
        for name, entries in SUITES.items():
            print(f"suite {name}: {', '.join(entries)}")
        return 0
    if not args.model or not args.tasks:
        p.error("--model and --tasks are required")
    tasks = expand(args.tasks, set(task_names()), log=lambda m: print(m, file=sys.stderr))

    options = task_options(args.task_arg, {name for name, _ in tasks})
    if args.dry_run:
        return emit(dry_run(tasks, args, options), args)
    if not args.model.startswith("http"):
        for name, _ in tasks:
            if name.startswith("niah_"):
                options[name] = niah_defaults(args.model) | options.get(name, {})
    if args.allow_unsafe_code:  # to every task that runs code (the ones taking the option)
        for name, _ in tasks:
            try:
                get_task(name, **options.get(name, {}) | {"allow_unsafe_code": True})
            except ValueError as e:
                if "unknown option" in str(e):
                    continue
            options[name] = options.get(name, {}) | {"allow_unsafe_code": True}
    # built before the model loads, so a task that cannot run here (no code sandbox) says so at once
    tasks = [(get_task(name, **options.get(name, {})), shots) for name, shots in tasks]

    import torch

    from kollm.eval.models import load_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype) if args.dtype else None
    kw = {"dtype": dtype, "batch_tokens": args.batch_tokens, "compile": args.compile} \
        if not args.model.startswith("http") else {}
    model = load_model(args.model, device=device, endpoint_model=args.endpoint_model, **kw)
    model.system_prompt = args.system_prompt
    cfg = EvalConfig(num_fewshot=args.num_fewshot, limit=args.limit, seed=args.seed, data_dir=args.data_dir)
    for task, _ in tasks:  # judged answers cost money: keep them beside results.json, resume from them
        if isinstance(task, JudgeTask) and args.out and task.cache is None:
            task.cache = ReplyCache(Path(args.out) / f"judge_cache_{task.name}.jsonl")
    results = evaluate(model, tasks, cfg)

    if args.consistency:
        results["consistency"] = {}
        for spec in args.consistency:
            src, _, tgt = spec.partition(":")
            for t in (src, tgt):
                if t not in results["samples"]:
                    raise KeyError(f"--consistency {spec}: task {t!r} was not run (add it to --tasks)")
                if not all("pair_id" in rec for rec in results["samples"][t]):
                    raise ValueError(f"--consistency {spec}: task {t!r} has no parallel key, its items cannot be "
                                     "paired across languages (parallel tasks: global_mmlu_*, hrm8k_*)")
            metric = args.metric or next(m for m in ("acc", "exact_match", "exact_match_flexible")
                                         if m in results["results"][src]["metrics"])
            results["consistency"][spec] = consistency(results["samples"][src], results["samples"][tgt], metric,
                                                       lang_of(src), lang_of(tgt))
    if args.out:
        path = write_results(results, args.out)
        print(f"wrote {path}", file=sys.stderr)
        for name, r in results["results"].items():
            if name.startswith("niah_"):
                from kollm.eval.niah import cells_from_metrics, plot_heatmap

                png = plot_heatmap(cells_from_metrics(r["metrics"]), Path(args.out) / f"{name}.png",
                                   f"{name}: {args.model}")
                print(f"wrote {png}", file=sys.stderr)
    rc = 0
    for name, r in results["results"].items():
        if not r["metrics"] and r["failed_items"]["count"]:  # results.json is written, but there is no number
            print(f"WARNING: {name}: NOTHING COULD BE SCORED; first failure: {r['failed_items']['first'][0]}",
                  file=sys.stderr)
            rc = 1
    for task, _ in tasks:
        if isinstance(task, JudgeTask):
            m = results["results"][task.name]["metrics"]
            for e in task.errors[:5]:
                print(f"{task.name}: judge/answer failure: {e}", file=sys.stderr)
            if not m.get("score", {}).get("n") and "unparsable" in m:
                print(f"WARNING: {task.name}: NOTHING COULD BE SCORED ({m['unparsable']['value']} unparsable "
                      f"turns, {m['errors']['value']} failed calls of {results['results'][task.name]['n']} items)"
                      + (f"; first error: {task.errors[0]}" if task.errors else ""), file=sys.stderr)
                rc = 1
    if args.json:
        print(json.dumps(no_nan({k: v for k, v in results.items() if k != "samples"}), ensure_ascii=False, indent=1))
    else:
        print(summary_table(results))
        for spec, c in results.get("consistency", {}).items():
            print(f"consistency {spec}: " + ", ".join(
                f"{k}={v['value']:.4f} ({v['count']}/{v['of']})" for k, v in c.items() if isinstance(v, dict)
                and "value" in v))
    return rc
