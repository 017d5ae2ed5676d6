"""The evaluation task interface: what a benchmark is to the harness, and the task registry.

Follows lm-evaluation-harness's split of a task into *documents → requests → per-item metrics →
aggregate*: a task loads its items from local files (the benchmark's Hugging Face layout or its
original release), turns each item into requests the model answers (`loglikelihood` of a
continuation given a context, or `generate` until a stop sequence), scores the answers into a
per-item metrics dict, and the harness aggregates every metric as a mean with a standard error
(lm-eval's `mean` + `mean_stderr`, or a bootstrap for metrics that are not means).

A task in ten lines:

    @register_task("toy_yesno")
    class ToyYesNo(Task):
        output_type = "multiple_choice"
        def load(self, data_dir):  # -> list of item dicts
            return [{"q": "Is 2 > 1?", "choices": [" no", " yes"], "gold": 1}]
        def requests(self, item):
            return [Request("loglikelihood", (f"Q: {item['q']}\\nA:", c)) for c in item["choices"]]
        def process(self, item, results):
            return mc_metrics(results, item["choices"], item["gold"])

`kollm.eval.harness.evaluate(model, ["toy_yesno"])` then runs it. Tasks are found by name
through `get_task`; a task module registers itself on import, and `kollm.eval.tasks` imports
every built-in one.
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

RequestKind = Literal["loglikelihood", "generate"]


class Failed(str):
    """A generation the back-end could not deliver for one request (an endpoint reply without
    `choices`, an HTTP error for that prompt, text that is not valid Unicode): the text it did
    get (or ""), and `reason`. The harness counts the item under the reason instead of scoring
    it; the other items are unaffected."""

    reason: str

    def __new__(cls, reason: str, text: str = "") -> Failed:
        s = super().__new__(cls, text)
        s.reason = reason
        return s


@dataclass(frozen=True)
class Request:
    """One question to the model.

    loglikelihood: args = (context, continuation) → result (logprob: float, is_greedy: bool).
    generate: args = (context,) and `stop`, `max_new_tokens` → result: the generated text
    (stop sequence not included). `chat` asks an instruction-tuned back-end to wrap the context
    as a user message (ignored by base-model back-ends that score raw text).
    """

    kind: RequestKind
    args: tuple[str, ...]
    stop: tuple[str, ...] = ()
    max_new_tokens: int = 256
    chat: bool = False

    def __post_init__(self) -> None:
        want = {"loglikelihood": 2, "generate": 1}.get(self.kind)
        if want is None:
            raise ValueError(f"unknown request kind {self.kind!r} (loglikelihood | generate)")
        if len(self.args) != want:
            raise ValueError(f"{self.kind} request takes {want} args, got {len(self.args)}")


class UnknownOptions(ValueError):
    """Options no class in the task's hierarchy takes; `get_task` names the task and what it takes."""


class Task:
    """Base class. Subclasses set `name` (by `register_task`) and `output_type`, and implement
    `load`, `requests` and `process`. `few_shot_items` and `aggregate` have sensible defaults."""

    name: str = ""
    output_type: Literal["multiple_choice", "generate"] = "multiple_choice"
    num_fewshot: int = 0  # the default shot count; the harness may override per run
    # metric name -> aggregation ("mean" or a callable list[float] -> float); None: mean of all
    aggregations: dict[str, str | Callable[[list[float]], float]] | None = None
    # set by a parallel task (same items in several languages): the key that pairs items
    parallel_key: str | None = None
    split: str | None = None  # the split `load` scored, where the task knows it

    def __init__(self, **options: Any) -> None:
        if options:
            raise UnknownOptions(sorted(options))

    # Split-based tasks (lm-eval's test_split / fewshot_split) implement `_load(data_dir, split)`
    # and name their splits: items come from the first of `eval_splits` that has rows.
    eval_splits: tuple[str, ...] = ()
    fewshot_split: str | None = None
    expected_files: str = ""  # where the rows are looked for, for the "no rows" error

    def _load(self, data_dir: Path | None, split: str) -> list[dict]:
        raise NotImplementedError

    def load(self, data_dir: Path | None) -> list[dict]:
        """The evaluation items (test split, or dev where that is what the benchmark scores)."""
        if not self.eval_splits:
            raise NotImplementedError
        for split in self.eval_splits:
            if items := self._load(data_dir, split):
                self.split = split  # results.json says which one was scored (MMLU falls back to dev)
                return items
        if bad := getattr(self, "bad_rows", None):  # the file was there: say why nothing came of it
            raise ValueError(f"{data_dir}: {self.name}: {len(bad)} rows rejected: first error {bad[0]}")
        raise FileNotFoundError(f"{data_dir}: no {self.name} {' or '.join(self.eval_splits)} rows"
                                + (f" ({self.expected_files})" if self.expected_files else ""))

    def few_shot_items(self, data_dir: Path | None) -> list[dict]:
        """Items few-shot examples are drawn from (train/dev split). Default: none."""
        return self._load(data_dir, self.fewshot_split) if self.fewshot_split else []

    def select_fewshot(self, item: dict, pool: Sequence[dict], k: int, rng: random.Random) -> list[dict]:
        """k shots for `item` from `pool`. Default: lm-eval's random sampler (never the item itself)."""
        if k <= 0 or not pool:
            return []
        own = any(p == item for p in pool)  # pool is the evaluated split: draw one more, drop the item
        picked = rng.sample(list(pool), min(k + own, len(pool)))
        return [p for p in picked if p != item][:k]

    def requests(self, item: dict, fewshot: Sequence[dict] = ()) -> list[Request]:
        raise NotImplementedError

    def process(self, item: dict, results: list[Any]) -> dict[str, Any]:
        """Results of `requests(item)` (same order) → metrics for this one item (floats; a metric
        with its own aggregation may use any value, e.g. (gold, pred) pairs for F1)."""
        raise NotImplementedError

    def aggregate(self, per_item: list[dict[str, float]], bootstrap_iters: int = 1000,
                  seed: int = 1234) -> dict[str, dict[str, float]]:
        """Per-item metrics → {metric: {"value", "stderr", "n"}}."""
        out: dict[str, dict[str, float]] = {}
        names = sorted({k for m in per_item for k in m})
        for name in names:
            xs = [m[name] for m in per_item if name in m and m[name] is not None]
            agg = (self.aggregations or {}).get(name, "mean")
            if agg == "mean":
                out[name] = {"value": mean(xs), "stderr": mean_stderr(xs), "n": len(xs)}
            else:
                out[name] = {"value": agg(xs), "stderr": bootstrap_stderr(agg, xs, bootstrap_iters, seed),
                             "n": len(xs)}
        return out


# --- aggregation helpers (lm-eval's definitions) ------------------------------------------------

def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def mean_stderr(xs: Sequence[float]) -> float:
    """Standard error of the mean with the sample (n−1) standard deviation, as lm-eval does."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mu = mean(xs)
    var = sum((x - mu) ** 2 for x in xs) / (n - 1)
    return math.sqrt(var / n)


def bootstrap_stderr(fn: Callable[[list[float]], float], xs: Sequence[float], iters: int = 1000,
                     seed: int = 1234) -> float:
    """Standard deviation of `fn` over `iters` resamples with replacement."""
    if len(xs) < 2:
        return float("nan")
    rng = random.Random(seed)
    xs = list(xs)
    stats = [fn(rng.choices(xs, k=len(xs))) for _ in range(iters)]
    return math.sqrt(mean_var(stats))


def mean_var(xs: Sequence[float]) -> float:
    mu = mean(xs)
    return sum((x - mu) ** 2 for x in xs) / (len(xs) - 1)


def mc_metrics(results: Sequence[tuple[float, bool]], choices: Sequence[str], gold: int) -> dict[str, float]:
    """acc, acc_norm (log-likelihood per character, as lm-eval) and acc_bytes (per UTF-8 byte:
    a Hangul syllable is 1 character but 3 bytes, so the two normalisations disagree on Korean)."""
    lls = [r[0] for r in results]
    by_chars = [ll / max(len(c), 1) for ll, c in zip(lls, choices)]
    by_bytes = [ll / max(len(c.encode("utf-8")), 1) for ll, c in zip(lls, choices)]
    return {"acc": float(argmax(lls) == gold), "acc_norm": float(argmax(by_chars) == gold),
            "acc_bytes": float(argmax(by_bytes) == gold)}


def argmax(xs: Sequence[float]) -> int:
    """First index of the maximum (numpy's tie rule, which lm-eval inherits)."""
    return max(range(len(xs)), key=lambda i: (xs[i], -i))


# --- registry ------------------------------------------------------------------------------------

_TASKS: dict[str, Callable[..., Task]] = {}


def register_task(*names: str):
    """Class decorator: register a Task class (or factory) under one or more names. The first
    name becomes the class's `name` unless it already has one set by a factory."""

    def deco(cls):
        for n in names:
            if n in _TASKS:
                raise ValueError(f"task {n!r} registered twice")
            _TASKS[n] = _named(cls, n)
        return cls

    return deco


def _named(cls, name: str) -> Callable[..., Task]:
    def make(**options: Any) -> Task:
        try:
            task = cls(**options)
        except (UnknownOptions, TypeError):
            keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            known = {p.name for c in cls.__mro__ if "__init__" in vars(c)
                     for p in inspect.signature(vars(c)["__init__"]).parameters.values()
                     if p.kind in keyword and p.name != "self"}
            unknown = sorted(set(options) - known)
            if not unknown:  # a TypeError of the task's own
                raise
            raise ValueError(f"task {name}: unknown option(s) {unknown}"
                             + (f"; it takes {', '.join(sorted(known))}" if known else "; it takes none")) from None
        task.name = name
        return task

    return make


def get_task(name: str, **options: Any) -> Task:
    import kollm.eval.tasks  # noqa: F401  (registers the built-in tasks)

    if name not in _TASKS:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(sorted(_TASKS))}")
    return _TASKS[name](**options)


def task_names() -> list[str]:
    import kollm.eval.tasks  # noqa: F401

    return sorted(_TASKS)
