"""Final answers: extraction from a completion and matching against a gold answer, one
implementation for the benchmarks that score answers (GSM8K, MATH, HRM8K in `eval/tasks/
reasoning.py`) and GRPO's math reward (`rl/rewards.py`), so a model is scored in evaluation the way
it was rewarded in training.

- Extraction (open-instruct's verifiers, lm-eval's `last_boxed_only_string`): the content of the last
  `\\boxed{...}` with balanced braces, else the last number of the text.
- Numbers are normalised the way answers are written in English and Korean: thousands separators
  (`1,234`), currency (`$`, `₩`, `원`, `달러`), percent, units and Korean counters after the number
  (`42개`, `정답은 42개입니다`) are ignored, and a Korean magnitude word multiplies (`3만 원` = 30000).
  Plain numbers are compared exactly (as fractions, within TOL).
- Anything else is equal under Hendrycks et al.'s MATH string normalisation (`is_equiv`, what
  lm-eval's `hendrycks_math` compares) or as sympy expressions (math-verify, as Open-R1 and
  lighteval do).

Why one matcher: the two copies this replaces disagreed. The evaluation one (HRM8K) compared
floats within 1e-6 and fell back on `is_equiv`, so `\\frac{6}{8}` vs `\\frac{3}{4}`, `2\\sqrt{2}` vs
`\\sqrt{8}`, `42개` vs 42 or 2/3 vs 0.6666666666666666 scored wrong; the reward one compared within
1e-9, had no `is_equiv` step, and read `\\boxed 5$` as the next brace after it. Each step only says
"equal" for answers that are equal, so the union (numbers within 1e-6, then normalised strings, then
sympy) keeps every match either copy made (tests/test_answers.py). The MATH task itself keeps
lm-eval's `is_equiv` alone, for parity with lm-eval's numbers.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction

# absolute: golds written as long floats (0.6666666666666666 is 2/3) and answers rounded to six
# places match, as the evaluation copy let them (|a - b| < 1e-6)
TOL = Fraction(1, 10**6)

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
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced, stripped; None if
    there is none. `\\boxed 5$` (no braces) is Hendrycks' other form: its content runs to the `$`."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    if text.startswith("\\boxed ", start):
        return text[start + len("\\boxed "):].split("$")[0].strip()
    i = start + len("\\boxed" if text.startswith("\\boxed", start) else "\\fbox")
    if not text.startswith("{", i):
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


def symbolic_equal(gold: str, pred: str, timeout_s: int = 3) -> bool:
    """math-verify's sympy equality of two LaTeX/plain expressions. Its time limit uses
    SIGALRM, which only the main thread may set; elsewhere it runs without one."""
    # here, not at the top: math-verify loads sympy (a second), needed only past the cheaper steps
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



# -- Hendrycks et al.'s MATH normalisation (lm-eval `hendrycks_math`) -----------------------------
def _fix_fracs(s: str) -> str:
    parts = s.split("\\frac")
    out = parts[0]
    for p in parts[1:]:
        out += "\\frac"
        if p.startswith("{") or len(p) < 2:
            out += p
        else:
            a, b, rest = p[0], p[1], p[2:]
            out += "{" + a + "}" + (b + rest if b == "{" else "{" + b + "}" + rest)
    return out


def _fix_a_slash_b(s: str) -> str:
    if s.count("/") != 1:
        return s
    a, b = s.split("/")
    if a.isdigit() and b.isdigit():
        return f"\\frac{{{a}}}{{{b}}}"
    return s


def _fix_sqrt(s: str) -> str:
    return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)


def strip_string(s: str) -> str:
    """Hendrycks et al.'s MATH answer normalisation (what lm-eval's `is_equiv` compares)."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    s = re.sub(r"\\text\{\s*[a-zA-Z ]*\}$", "", s).strip() if "\\text{ " in s else s
    s = s.replace("\\%", "").replace(r"\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if len(s.split("=")) == 2 and len(s.split("=")[0]) <= 2:
        s = s.split("=")[1]
    s = _fix_sqrt(s).replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def is_equiv(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    try:
        return strip_string(a) == strip_string(b)
    except Exception:  # noqa: BLE001 — malformed LaTeX compares raw, as Hendrycks' code does
        return a == b


def answers_match(gold: str, pred: str, timeout_s: int = 3) -> bool:
    """Whether `pred` states the same answer as `gold`: equal as numbers (exact, within TOL), a
    boxed number with a unit or counter (`42개`), equal under Hendrycks' MATH normalisation, or
    equal as sympy expressions (math-verify, under its time limit) -- the first that decides."""
    g, p = as_number(gold), as_number(pred)
    if g is not None and p is not None:
        return abs(g - p) <= TOL
    if g is not None and p is None:  # "\\boxed{42개}" or "\\boxed{x = 42}": its last number
        hit = last_number(pred)
        if hit is not None and hit[1] == g and not re.search(r"\\(frac|sqrt|pi|cdot|times)|\^", pred):
            return True
    return is_equiv(pred, gold) or symbolic_equal(gold, pred, timeout_s)
