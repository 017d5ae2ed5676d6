"""The evaluation loop: tasks → requests → one batched model call per request kind → per-item
metrics → aggregates with standard errors → results.json.

Follows lm-evaluation-harness's `simple_evaluate` flow: every task's requests are built first,
all log-likelihood requests go to the model in one call (so it can batch and share contexts
across items and tasks), generations likewise, then each task scores its items. Few-shot
examples are drawn per task with a fixed seed (lm-eval's 1234) from the task's train/dev pool.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kollm.eval.task import Failed, Request, Task, get_task


@dataclass
class EvalConfig:
    num_fewshot: int | None = None  # None: each task's default
    limit: int | None = None  # first N items per task (smoke runs)
    seed: int = 1234
    bootstrap_iters: int = 1000
    data_dir: str | None = None

    def __post_init__(self) -> None:
        if self.limit is not None and (isinstance(self.limit, bool) or self.limit < 1):
            # items[:-1] would quietly drop the last item: a limit is a count, None means all
            raise ValueError(f"limit must be a positive number of items (None: all), got {self.limit!r}")
        if self.num_fewshot is not None and (isinstance(self.num_fewshot, bool) or self.num_fewshot < 0):
            # k <= 0 reads as "no examples": -3 would run zero-shot and say nothing
            raise ValueError(f"num_fewshot must be >= 0 (None: each task's default), got {self.num_fewshot!r}")


@dataclass
class TaskRun:
    task: Task
    items: list[dict]
    n_shot: int = 0
    requests: list[list[Request]] = field(default_factory=list)
    results: list[list[Any]] = field(default_factory=list)
    truncated: set[int] = field(default_factory=set)  # items whose prompt lost its start to fit the context


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    return v


def _prompt(reqs: Sequence[Request]) -> str | list[str] | None:
    """The context every request shares, or every context when the choices have their own
    (XWinograd's partial scoring puts each option in its context)."""
    contexts = list(dict.fromkeys(q.args[0] for q in reqs))
    return None if not contexts else contexts[0] if len(contexts) == 1 else [q.args[0] for q in reqs]


def evaluate(model, tasks: Sequence[str | Task | tuple[str, int | None]], cfg: EvalConfig | None = None,
             log=lambda msg: print(msg, file=sys.stderr)) -> dict:
    """Run `tasks` on `model` (a back-end from kollm.eval.models, or anything with
    `loglikelihood(pairs)` and `generate(requests)`). A task may come with its own shot count
    as (name, shots), as suites give them; `cfg.num_fewshot` overrides both. Returns the
    results.json dict."""
    cfg = cfg or EvalConfig()
    data_dir = Path(cfg.data_dir) if cfg.data_dir else None
    runs: list[TaskRun] = []
    for t in tasks:
        t, shots = t if isinstance(t, tuple) else (t, None)
        task = get_task(t) if isinstance(t, str) else t
        items = task.load(data_dir)
        bad = getattr(task, "bad_rows", [])
        if not items:  # a task with nothing to score must not vanish from the results silently
            raise ValueError(f"{task.name}: no usable items in {data_dir}"
                             + (f" ({len(bad)} malformed rows; first: {bad[0]})" if bad else ""))
        if cfg.limit is not None:
            items = items[: cfg.limit]
        k = cfg.num_fewshot if cfg.num_fewshot is not None else shots if shots is not None else task.num_fewshot
        pool = task.few_shot_items(data_dir) if k > 0 else []
        if not hasattr(task, "bad_rows"):
            task.bad_rows = []
        bad = task.bad_rows
        pool = [p for p in pool if _buildable(task, p, bad)]  # a broken shot would sink every item it joins
        if k > 0 and not pool:  # never change a requested shot count silently
            raise ValueError(f"{task.name}: {k}-shot requested but it has no items to draw shots from "
                             f"(no train/dev split in {data_dir}); ask for {task.name}:0 to run it 0-shot")
        rng = random.Random(cfg.seed)
        run = TaskRun(task, [])
        for item in items:
            shots = task.select_fewshot(item, pool, k, rng) if pool else []
            try:
                reqs = task.requests(item, shots)
            except (KeyError, ValueError, TypeError, IndexError) as e:  # one bad row, not a failed task
                bad.append(f"{item.get('_where', task.name)}: {type(e).__name__}: {e}")
                continue
            run.items.append(item)
            run.requests.append(reqs)
        if not run.items:
            raise ValueError(f"{task.name}: no usable items in {data_dir} ({len(bad)} malformed rows; first: {bad[0]})")
        items = run.items
        run.n_shot = k if pool else 0
        runs.append(run)
        log(f"{task.name}: {len(items)} items" + (f" of the {task.split} split" if task.split else "")
            + f", {k if pool else 0}-shot"
            + (f", {len(bad)} malformed rows skipped (first: {bad[0]})" if bad else "")
            + (f", {len(w)} data warnings (first: {w[0]})" if (w := getattr(task, "data_warnings", [])) else ""))

    t0 = time.perf_counter()
    for kind in ("loglikelihood", "generate"):
        flat = [(ri, ii, qi) for ri, r in enumerate(runs) for ii, reqs in enumerate(r.requests)
                for qi, q in enumerate(reqs) if q.kind == kind]
        if not flat:
            continue
        reqs = [runs[ri].requests[ii][qi] for ri, ii, qi in flat]
        log(f"{kind}: {len(reqs)} requests")
        answers = model.loglikelihood([q.args for q in reqs]) if kind == "loglikelihood" else model.generate(reqs)
        for r in runs:
            if not r.results:
                r.results = [[None] * len(q) for q in r.requests]
        for (ri, ii, qi), a in zip(flat, answers):
            runs[ri].results[ii][qi] = a
        for j in getattr(model, "truncated", ()):  # a back-end that cuts prompts to its context says which
            runs[flat[j][0]].truncated.add(flat[j][1])
    elapsed = time.perf_counter() - t0

    out: dict[str, Any] = {"model": getattr(model, "name", type(model).__name__), "config": asdict(cfg),
                           "model_seconds": round(elapsed, 3), "results": {}, "samples": {}}
    for r in runs:
        per_item, records, failed = [], [], []
        for i, (item, reqs, res) in enumerate(zip(r.items, r.requests, r.results or [[]] * len(r.items))):
            # One item that cannot be scored (a failed generation, a gold answer of the wrong type,
            # a scorer that raises) is counted with its reason; the rest are scored and everything
            # generated is still written.
            reason, why = next(((f"generation: {x.reason}", f"generation failed: {x.reason}: {str(x)[:200]}")
                                for x in res if isinstance(x, Failed)), (None, None))
            m: dict[str, Any] = {}
            if why is None:
                try:
                    m = r.task.process(item, res)
                except Exception as e:  # noqa: BLE001 -- per item: counted and reported, never fatal to the run
                    reason, why = f"scoring: {type(e).__name__}", f"scoring failed: {type(e).__name__}: {e}"
            if why is None:
                per_item.append(m)
            else:
                failed.append((item.get("_where") or f"{r.task.name}[{i}]", reason, why))
            records.append({
                "index": i, "where": item.get("_where"),
                **({"pair_id": item.get(r.task.parallel_key)} if r.task.parallel_key else {}),
                **({"failed": why} if why else {}),
                **({"truncated": True} if i in r.truncated else {}),
                "metrics": {k: _jsonable(v) for k, v in m.items()},
                "target": item.get("gold", item.get("answer")),
                # a task that talks to its model itself (LLM-as-judge) leaves what it asked and got in the item
                "responses": item["_responses"] if "_responses" in item else [_jsonable(x) for x in res],
                "prompt": item["_prompt"] if "_prompt" in item else _prompt(reqs),
                **({"continuations": [q.args[1] for q in reqs]} if reqs and reqs[0].kind == "loglikelihood" else {}),
            })
        try:
            agg = r.task.aggregate(per_item, cfg.bootstrap_iters, cfg.seed)
        except Exception as e:  # noqa: BLE001 -- the generations are still written, with the error beside them
            agg = {}
            failed.append((r.task.name, "aggregate", f"aggregating failed: {type(e).__name__}: {e}"))
            log(f"{r.task.name}: aggregating the metrics failed: {type(e).__name__}: {e}")
        if r.truncated:
            log(f"{r.task.name}: {len(r.truncated)} of {len(r.items)} prompts longer than the model's context, "
                "their start cut off (truncated_prompts in results.json)")
        if failed:
            log(f"{r.task.name}: {len(failed)} of {len(r.items)} items not scored (first: {failed[0][0]}: "
                f"{failed[0][2]})")
        out["results"][r.task.name] = {
            "metrics": agg, "split": r.task.split, "n": len(r.items), "num_fewshot": r.n_shot,
            "output_type": r.task.output_type, "bad_rows": len(getattr(r.task, "bad_rows", [])),
            "truncated_prompts": len(r.truncated),
            "failed_items": {"count": len(failed), "reasons": dict(Counter(reason for _, reason, _ in failed)),
                             "first": [f"{w}: {why}" for w, _, why in failed[:5]]},
            **getattr(r.task, "run_info", {}),  # what a task reports about how it scored (e.g. its sandbox)
            **({"source": r.task.source} if getattr(r.task, "source", None) else {}),  # files a task read
            **({"data_warnings": {"count": len(w), "first": w[:5]}} if (w := getattr(r.task, "data_warnings", []))
               else {}),
        }
        out["samples"][r.task.name] = records
    return out


def _buildable(task: Task, item: dict, bad: list[str]) -> bool:
    try:
        task.requests(item, [])
        return True
    except (KeyError, ValueError, TypeError, IndexError) as e:
        bad.append(f"{item.get('_where', task.name)} (few-shot pool): {type(e).__name__}: {e}")
        return False


def no_nan(v: Any) -> Any:
    # NaN (stderr of one item, ratio of an empty set) is not JSON: written as null
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, dict):
        return {k: no_nan(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [no_nan(x) for x in v]
    return v


def write_results(results: dict, out_dir: str | Path) -> Path:
    """`out_dir/results.json` (summary + per-item records; NaN written as null)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    tmp = path.with_suffix(".json.tmp")
    # backslashreplace: a lone surrogate in some text is written as its JSON escape, not a crash
    tmp.write_bytes(json.dumps(no_nan(results), ensure_ascii=False, indent=1, default=str, allow_nan=False)
                    .encode("utf-8", "backslashreplace"))
    tmp.replace(path)
    return path


def summary_table(results: dict) -> str:
    lines = [f"{'task':<24} {'split':<10} {'metric':<22} {'value':>8} {'± stderr':>9} {'n':>6}"]
    for name, r in results["results"].items():
        for metric, v in r["metrics"].items():
            lines.append(f"{name:<24} {r.get('split') or '-':<10} {metric:<22} {v['value']:>8.4f} "
                         f"{v['stderr']:>9.4f} {v['n']:>6}")
    return "\n".join(lines)
