"""HumanEval and MBPP, pass@1 by running the completion against the benchmark's tests in the
sandbox of kollm.eval.code_exec.

Prompts, stop sequences and program assembly follow lm-evaluation-harness's `humaneval` (0-shot,
the function signature + docstring as prompt, stops at the next top-level statement) and `mbpp`
(3-shot "You are an expert Python programmer..." with `[BEGIN]`/`[DONE]`, shots = MBPP items 2-4,
lm-eval's `first_n`). Greedy generation, one sample, so pass@1 = the fraction passing.
Data: `openai_humaneval/` (HF `openai/openai_humaneval`, or the original `HumanEval.jsonl[.gz]`)
with `task_id, prompt, canonical_solution, test, entry_point`; `mbpp/` (HF
`google-research-datasets/mbpp`, `full` config, or the original `mbpp.jsonl`, test = task ids
11-510) with `task_id, text, code, test_list`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kollm.eval.code_exec import (
    SandboxConfig,
    humaneval_check,
    humaneval_program,
    mbpp_program,
    require_sandbox,
    run_many,
    unsafe,
)
from kollm.eval.task import Request, Task, register_task
from kollm.eval.tasks.common import convert_rows, find_split, locate, read_rows

MBPP_SHOTS = [
    {"task_id": 2, "text": "Write a function to find the similar elements from the given two tuple lists.",
     "code": "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n"
             "  return (res) ",
     "test_list": ["assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
                   "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
                   "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)"]},
    {"task_id": 3, "text": "Write a python function to identify non-prime numbers.",
     "code": "import math\r\ndef is_not_prime(n):\r\n    result = False\r\n    for i in range(2,int(math.sqrt(n)) + 1):"
             "\r\n        if n % i == 0:\r\n            result = True\r\n    return result",
     "test_list": ["assert is_not_prime(2) == False", "assert is_not_prime(10) == True",
                   "assert is_not_prime(35) == True"]},
    {"task_id": 4, "text": "Write a function to find the largest integers from a given list of numbers using heap "
                           "queue algorithm.",
     "code": "import heapq as hq\r\ndef heap_queue_largest(nums,n):\r\n  largest_nums = hq.nlargest(n, nums)\r\n"
             "  return largest_nums",
     "test_list": ["assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] ",
                   "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] ",
                   "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]"]},
]


class CodeTask(Task):
    """Generation + sandboxed execution; `process` runs each program as the harness scores it, and
    `score_batch` runs many concurrently (what a caller with a list of completions uses)."""

    output_type = "generate"
    split = "test"
    sandbox = SandboxConfig(timeout_s=3.0)  # human-eval's and HF code_eval's (lm-eval's) per-program limit

    def __init__(self, allow_unsafe_code: bool = False, **options: Any) -> None:
        """`allow_unsafe_code`: where no sandbox works on this machine, run the model's programs
        unsandboxed instead of refusing (`kollm eval --allow-unsafe-code`). Refusal happens here,
        before any generation is spent."""
        super().__init__(**options)
        self.bad_rows: list[str] = []
        if allow_unsafe_code:
            self.sandbox = unsafe(self.sandbox)
        self.run_info = {"sandbox": require_sandbox(allow_unsafe_code)}  # recorded in results.json

    def program(self, item: dict, completion: str) -> str:
        raise NotImplementedError

    def process(self, item: dict, results: list[Any]) -> dict[str, Any]:
        return {"pass@1": float(run_many([self.program(item, results[0])], self.sandbox, 1)[0].passed)}

    def score_batch(self, items: Sequence[dict], completions: Sequence[str], workers: int = 2) -> list[float]:
        res = run_many([self.program(i, c) for i, c in zip(items, completions)], self.sandbox, workers)
        return [float(r.passed) for r in res]


def _humaneval(row: dict) -> dict:
    for k in ("task_id", "prompt", "test", "entry_point"):
        if not isinstance(row.get(k), str):
            raise KeyError(f"missing or non-string field {k!r}")
    return dict(row)


@register_task("humaneval")
class HumanEval(CodeTask):
    stop = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
    max_new_tokens = 1024

    def load(self, data_dir: Path | None) -> list[dict]:
        base = locate(data_dir, ["openai_humaneval", "human-eval", "humaneval"], "humaneval")
        files = find_split(base, "test") or find_split(base / "openai_humaneval", "test") or sorted(
            p for p in base.rglob("HumanEval.jsonl*") if p.is_file())
        if not files:
            raise FileNotFoundError(f"humaneval: no test split or HumanEval.jsonl under {base}")
        return convert_rows([r for f in files for r in read_rows(f, self.bad_rows)], _humaneval, self.bad_rows)

    def requests(self, item: dict, fewshot: Sequence[dict] = ()) -> list[Request]:
        return [Request("generate", (item["prompt"],), stop=self.stop, max_new_tokens=self.max_new_tokens)]

    def program(self, item: dict, completion: str) -> str:
        return humaneval_program(item, completion)


def _mbpp(row: dict) -> dict:
    if not isinstance(row.get("text"), str) or not isinstance(row.get("code"), str):
        raise KeyError("missing field 'text' or 'code'")
    tests = list(row["test_list"])
    if len(tests) < 3:
        raise ValueError(f"test_list has {len(tests)} asserts, the prompt shows 3")
    return {**row, "test_list": tests}


@register_task("mbpp")
class MBPP(CodeTask):
    num_fewshot = 3
    stop = ("[DONE]",)
    max_new_tokens = 256  # lm-eval's default max_gen_toks

    def load(self, data_dir: Path | None) -> list[dict]:
        base = locate(data_dir, ["mbpp", "google-research-datasets/mbpp"], "mbpp")
        files = find_split(base / "full", "test") or find_split(base, "test")
        if files:
            return convert_rows([r for f in files for r in read_rows(f, self.bad_rows)], _mbpp, self.bad_rows)
        orig = base / "mbpp.jsonl"
        if not orig.exists():
            raise FileNotFoundError(f"mbpp: no test split or mbpp.jsonl under {base}")
        rows = [(w, r) for w, r in read_rows(orig, self.bad_rows) if 11 <= int(r.get("task_id", 0)) <= 510]
        return convert_rows(rows, _mbpp, self.bad_rows)

    def few_shot_items(self, data_dir: Path | None) -> list[dict]:
        return MBPP_SHOTS

    def select_fewshot(self, item, pool, k, rng):  # lm-eval's first_n sampler
        return list(pool)[:k]

    @staticmethod
    def text(item: dict) -> str:
        t = item["test_list"]
        return (f"You are an expert Python programmer, and here is your task: {item['text']} Your code should "
                f"pass these tests:\n\n{t[0]}\n{t[1]}\n{t[2]}\n[BEGIN]\n")

    def requests(self, item: dict, fewshot: Sequence[dict] = ()) -> list[Request]:
        shots = "".join(self.text(s) + s["code"] + "\n[DONE]" + "\n\n" for s in fewshot)
        return [Request("generate", (shots + self.text(item),), stop=self.stop, max_new_tokens=self.max_new_tokens)]

    def program(self, item: dict, completion: str) -> str:
        return mbpp_program(item, completion)


# --- the Trillion report's 0-shot CoT prompts for code (its Figures 8 and 9) --------------------

TRILLION_CODE_COT = "Wrap your code in ```python```. Let's reason step by step."
_FENCE = re.compile(r"```(?:python|py|Python)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str:
    """The last fenced code block of a chat answer (the prompt asks for one); the whole answer
    when there is none, so a bare program still runs."""
    blocks = _FENCE.findall(completion)
    return blocks[-1] if blocks else completion


@register_task("mbpp_cot")
class MBPPCoT(MBPP):
    """Trillion 7B's MBPP prompt (Figure 8) as a chat turn, 0-shot; the code is the answer's last
    ```python``` block, run against the row's asserts. Not an lm-eval task."""

    num_fewshot, stop, max_new_tokens = 0, (), 1024

    def few_shot_items(self, data_dir: Path | None) -> list[dict]:
        return []  # 0-shot by definition

    def requests(self, item: dict, fewshot: Sequence[dict] = ()) -> list[Request]:
        t = item["test_list"]
        prompt = (f"You are an expert Python programmer, and here is your task: {item['text']}\n"
                  f"Your code should pass these tests:\n\n```\n{t[0]}\n{t[1]}\n{t[2]}\n```\n\n{TRILLION_CODE_COT}")
        return [Request("generate", (prompt,), stop=self.stop, max_new_tokens=self.max_new_tokens, chat=True)]

    def program(self, item: dict, completion: str) -> str:
        return mbpp_program(item, extract_code(completion))


@register_task("humaneval_cot")
class HumanEvalCoT(HumanEval):
    """Trillion 7B's HumanEval prompt (Figure 9) as a chat turn: the task is the signature and
    docstring. An answer that defines the entry point is run after the prompt (its imports) and
    replaces the stub; one that does not is taken as the body, as in completion mode."""

    stop, max_new_tokens = (), 1024

    def requests(self, item: dict, fewshot: Sequence[dict] = ()) -> list[Request]:
        prompt = f"You are an expert Python programmer, and here is your task: {item['prompt']}\n\n{TRILLION_CODE_COT}"
        return [Request("generate", (prompt,), stop=self.stop, max_new_tokens=self.max_new_tokens, chat=True)]

    def program(self, item: dict, completion: str) -> str:
        code = extract_code(completion)
        if re.search(rf"^def {re.escape(item['entry_point'])}\s*\(", code, re.MULTILINE):
            stub = item["prompt"] + "    pass\n"  # a docstring-only body is valid too; pass keeps it explicit
            return humaneval_check(item, stub + "\n" + code)
        return humaneval_program(item, code)
