"""Verifiable rewards for GRPO: math answers, instruction following, format, and user functions.

A reward function is `fn(completion: str, row: dict) -> float | None` (the row is the prompt's
dataset row: `answer` for math, `instruction_id_list`/`kwargs` for instruction following). None
means "does not apply to this row" (a math reward on an IFEval row): it adds nothing, so one
prompt file may mix math and instruction-following rows, as the Trillion report's RLVR set does.

Math (open-instruct's verifiers: GSM8K takes the last number, MATH the last `\\boxed{}` compared
symbolically): the candidate is the content of the last `\\boxed{...}`, else the last number of the
completion, matched against the row's `answer` (GSM8K's `... #### 72` is cut after `####`) by
`kollm.answers`, the matcher evaluation scores HRM8K with (numbers normalised for English and
Korean, then Hendrycks' normalisation, then math-verify's sympy equality).

Instruction following: the fraction of the row's IFEval / Korean IFEval instructions the completion
follows (strict), with kollm.ifeval's checkers, as open-instruct's IFEvalVerifier scores it.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from kollm.answers import answers_match, extract_answer, gold_answer
from kollm.ifeval import check

RewardFn = Callable[[str, dict], "float | None"]
def math_reward(completion: str, row: dict, timeout_s: int = 3) -> float | None:
    """1.0 when the completion's answer equals the row's gold `answer`, else 0.0 (None: no answer)."""
    if row.get("answer") is None:
        return None
    pred = extract_answer(completion)
    return float(pred is not None and answers_match(gold_answer(row["answer"]), pred, timeout_s))


# -- instruction following -----------------------------------------------------------------------
_HANGUL = re.compile(r"[\uac00-\ud7a3]")


def ifeval_reward(completion: str, row: dict) -> float | None:
    """Fraction of the row's instructions followed (strict), English or Korean checkers by the
    row's `lang` (else Korean when the prompt has Hangul)."""
    ids, kwargs = row.get("instruction_id_list"), row.get("kwargs")
    if not ids:
        return None
    lang = row.get("lang") or ("ko" if _HANGUL.search(str(row.get("prompt", ""))) else "en")
    kwargs = list(kwargs or [{}] * len(ids))
    return sum(check(lang, i, completion, kw) for i, kw in zip(ids, kwargs)) / len(ids)


# -- format --------------------------------------------------------------------------------------
FORMATS = {
    # the final answer is boxed, once, near the end (whatever comes after is a short sentence end)
    "boxed": r"\\boxed\{.+\}[^\n]{0,40}\s*$",
    # DeepSeek-R1's template: reasoning in <think>, then the answer in <answer>
    "think_answer": r"^\s*<think>.+?</think>\s*<answer>.+?</answer>\s*$",
    # an explicit answer phrase ending the completion, English or Korean
    "answer_phrase": r"((answer is|answer:|####)|(답|정답)(은|는|:))[^\n]{0,40}\s*$",
}


def format_reward(completion: str, row: dict, pattern: str = "boxed") -> float:
    """1.0 when the completion matches the format (a name of FORMATS or a regex), else 0.0."""
    return float(re.search(FORMATS.get(pattern, pattern), completion, re.DOTALL | re.IGNORECASE) is not None)


BUILTIN: dict[str, RewardFn] = {"math": math_reward, "ifeval": ifeval_reward, "format": format_reward}


def resolve(name: str) -> RewardFn:
    """A built-in reward name, or a user function by dotted path `pkg.module.fn` / `pkg.module:fn`."""
    if name in BUILTIN:
        return BUILTIN[name]
    module, sep, attr = name.partition(":") if ":" in name else name.rpartition(".")
    if not module or not attr:
        raise ValueError(f"reward {name!r}: not a built-in ({', '.join(BUILTIN)}) nor a dotted path pkg.module.fn")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"reward {name!r}: cannot import it ({e})") from None
    if not callable(fn):
        raise ValueError(f"reward {name!r}: {type(fn).__name__} is not callable")
    return fn


@dataclass
class RewardSpec:
    name: str  # built-in name or dotted path
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)


class Rewards:
    """The weighted sum of reward functions (one returning None adds nothing). `components` keeps
    each function's per-row values (None where it does not apply), for logging."""

    def __init__(self, specs: list[RewardSpec | dict]):
        self.specs = [s if isinstance(s, RewardSpec) else RewardSpec(**s) for s in specs]
        if not self.specs:
            raise ValueError("grpo.rewards: give at least one reward")
        self.fns = [resolve(s.name) for s in self.specs]

    @property
    def names(self) -> list[str]:
        """Short metric names: `math`, `format`, a user function's own name (`pkg.mod.fn` → `fn`)."""
        return [s.name.replace(":", ".").rsplit(".", 1)[-1] for s in self.specs]

    def __call__(self, completions: list[str], rows: list[dict]
                 ) -> tuple[list[float], dict[str, list[float | None]]]:
        totals = [0.0] * len(completions)
        components = {}
        for name, spec, fn in zip(self.names, self.specs, self.fns):
            vals = [fn(c, r, **spec.kwargs) for c, r in zip(completions, rows)]
            vals = [None if v is None else float(v) for v in vals]
            totals = [t if v is None else t + spec.weight * v for t, v in zip(totals, vals)]
            components[name] = vals
        return totals, components


__all__ = ["math_reward", "ifeval_reward", "format_reward", "resolve", "Rewards", "RewardSpec", "BUILTIN", "FORMATS"]
