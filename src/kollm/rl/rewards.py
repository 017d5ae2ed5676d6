"""Verifiable rewards for GRPO: math answers, instruction following, format, and user functions.

A reward function is `fn(completion: str, row: dict) -> float | None` (the row is the prompt's
dataset row: `answer` for math, `instruction_id_list`/`kwargs` for instruction following). None
means "does not apply to this row" (a math reward on an IFEval row): it adds nothing, so one
prompt file may mix math and instruction-following rows, as the Trillion report's RLVR set does.

Math (open-instruct's verifiers: GSM8K takes the last number, MATH the last `\\boxed{}` compared
symbolically): the candidate is the content of the last `\\boxed{...}`, else the last number of the
completion. Numbers are normalised the way answers are written in English and Korean: thousands
separators (`1,234`), currency (`$`, `₩`, `원`, `달러`), percent, units and Korean counters after
the number (`42개`, `42원`, `정답은 42개입니다`) are ignored, and a Korean magnitude word multiplies
(`3만 원` = 30000). Plain numbers are compared exactly (as fractions); anything else (`\\frac{3}{4}`,
`2\\sqrt{2}`) goes to math-verify's sympy equality under its time limit. The gold answer is the
row's `answer` (GSM8K's `... #### 72` is cut after `####`).

Instruction following: the fraction of the row's IFEval / Korean IFEval instructions the completion
follows (strict), with kollm.eval.ifeval's checkers, as open-instruct's IFEvalVerifier scores it.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

RewardFn = Callable[[str, dict], "float | None"]
TOL = Fraction(1, 10**9)  # absolute: golds written as long floats (0.6666666666666666 is 2/3)

# -- numbers -------------------------------------------------------------------------------------
_KO_MAGNITUDE = {"천": 10**3, "만": 10**4, "억": 10**8, "조": 10**12}
# A sign only where it cannot be a subtraction ("10-3" ends in 3, not -3); digits with optional
# thousands separators, decimals, a fraction; then an optional Korean magnitude ("3만", "1.5억",
# not the "만" of "만큼"). No digit or point just before: never half a number.
_NUMBER = re.compile(
    r"(?<![\d.])(?:(?<![\w)])(?P<sign>[-−–])\s?)?(?:[$₩€£¥]\s?)?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:\s?/\s?(?P<den>\d+(?:\.\d+)?))?"
    r"(?:\s?(?P<mag>[천만억조])(?!큼))?"
)
# What may surround a bare answer: currency before; units, percent, Korean counters and
# particles (원, 개, 명, 입니다) after.
_UNITS = (r"dollars?|cents?|percent|mm|cm|km|kg|mg|ml|g|m|l|hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|"
          r"weeks?|months?|years?|miles?|feet|foot|ft|inch(?:es)?|pounds?|lbs?|ounces?|oz|units?|degrees?")
_LEAD = re.compile(r"^[\s$₩€£¥]+")
_TRAIL = re.compile(rf"(?:[\s%.。!]|(?![천만억조])[^\x00-\x7f]|\b(?:{_UNITS})\b)+$", re.IGNORECASE)


def _fraction(num: str, den: str | None, sign: str | None, mag: str | None) -> Fraction:
    value = Fraction(num.replace(",", ""))
    if den is not None:
        d = Fraction(den)
        if d == 0:
            raise ZeroDivisionError
        value /= d
    if mag:
        value *= _KO_MAGNITUDE[mag]
    return -value if sign else value


def last_number(text: str) -> tuple[str, Fraction] | None:
    """The last number written in `text` (its matched text and exact value), or None."""
    # The answer sits at the end: scan a tail first, the whole text only when the tail has no
    # number that starts strictly inside it (one at its edge may be cut).
    for start in (max(0, len(text) - 256), 0):
        hits = list(_NUMBER.finditer(text, start))
        for m in reversed(hits):
            if m.start() == start and start > 0:
                break
            try:
                return m.group(0).strip(), _fraction(m["num"], m["den"], m["sign"], m["mag"])
            except (ValueError, ZeroDivisionError):
                continue
        if start == 0:
            return None
    return None


def as_number(text: str) -> Fraction | None:
    """`text` as an exact number when it is nothing but one (currency, units, counters around it
    allowed: "$1,234", "42개", "3만 원", "50 \\text{cm}"), else None."""
    s = re.sub(r"\\text\{([^}]*)\}|\\mathrm\{([^}]*)\}", r" \1\2 ", text)  # LaTeX units
    s = re.sub(r"\\[,!; ]|\\%|\\\$", " ", s).replace("{,}", ",")
    s = _TRAIL.sub("", _LEAD.sub("", s)).strip()
    hit = _NUMBER.fullmatch(s)
    if hit is None:
        return None
    try:
        return _fraction(hit["num"], hit["den"], hit["sign"], hit["mag"])
    except (ValueError, ZeroDivisionError):
        return None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced; None if there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j].strip()
    return None


def gold_answer(answer) -> str:
    """The row's gold answer as text; GSM8K's worked `answer` keeps only what follows `####`."""
    text = str(answer)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    return text.strip()


# -- symbolic equality (math-verify) -------------------------------------------------------------
def symbolic_equal(gold: str, pred: str, timeout_s: int = 3) -> bool:
    """math-verify's sympy equality of two LaTeX/plain expressions. Its time limit uses
    SIGALRM, which only the main thread may set; elsewhere it runs without one."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    t = timeout_s if threading.current_thread() is threading.main_thread() else None
    cfg = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    try:
        g = parse(f"${gold}$", extraction_config=cfg, parsing_timeout=t)
        p = parse(f"${pred}$", extraction_config=cfg, parsing_timeout=t)
        return bool(g and p and verify(g, p, timeout_seconds=t))
    except Exception:  # a parse error or a timeout is a wrong answer, never a crash of the run
        return False


def extract_answer(completion: str) -> str | None:
    """The candidate answer of a completion: the last `\\boxed{}`'s content, else the last number."""
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed
    hit = last_number(completion)
    return hit[0] if hit else None


def answers_match(gold: str, pred: str, timeout_s: int = 3) -> bool:
    g, p = as_number(gold), as_number(pred)
    if g is not None and p is not None:
        return abs(g - p) <= TOL
    if g is not None and p is None:  # "\boxed{42개}" or "\boxed{x = 42}": its last number
        hit = last_number(pred)
        if hit is not None and hit[1] == g and not re.search(r"\\(frac|sqrt|pi|cdot|times)|\^", pred):
            return True
    return symbolic_equal(gold, pred, timeout_s)


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
    from kollm.eval.ifeval import check

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


__all__ = ["math_reward", "ifeval_reward", "format_reward", "extract_answer", "answers_match", "last_number",
           "last_boxed", "as_number", "gold_answer", "symbolic_equal", "resolve", "Rewards", "RewardSpec",
           "BUILTIN", "FORMATS"]
