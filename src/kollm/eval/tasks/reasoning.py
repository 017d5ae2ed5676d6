"""Generation tasks with answer extraction: GSM8K, MATH, HRM8K (ko/en), BBH.

GSM8K, MATH and BBH follow lm-evaluation-harness (`gsm8k`, `hendrycks_math`, `bbh_zeroshot`):
same prompts, stop sequences and extraction (GSM8K's strict "#### N" and flexible last-number
filters; MATH's Hendrycks `is_equiv` string normalisation). HRM8K is not in lm-eval; kollm's
prompt mirrors GSM8K's ("문제:/풀이:" for Korean, "Question:/Answer:" for the English originals)
and scores the last \\boxed{} or last number with `kollm.answers`, GRPO's math reward matcher.
Layouts (HF repo name / original):
- GSM8K: `gsm8k/main/<split>-*.parquet` (openai/gsm8k) or `gsm8k/<split>.jsonl` (grade-school-math).
- MATH: `hendrycks_math/<subject>/<split>-*.parquet` (EleutherAI/hendrycks_math) or the original
  `MATH/<split>/<subject>/<n>.json`.
- HRM8K: `HRM8K/<subset>/test-*.parquet` (HAERAE-HUB/HRM8K: question ko, original en, answer);
  `hrm8k_ko` and `hrm8k_en` share a `pair_id` for cross-lingual consistency.
- BBH: `bbh/<subtask>/test-*.parquet` (lukaemon/bbh) or the original `bbh/<subtask>.json`.
"""

from __future__ import annotations

import re

from kollm.answers import answers_match, is_equiv, last_boxed
from kollm.eval.task import register_task
from kollm.eval.tasks.common import GenerateTask, convert_rows, find_split, locate, read_rows

INVALID = "[invalid]"


def _rows(task, files):
    return (r for f in files for r in read_rows(f, task.bad_rows))


# --- GSM8K -----------------------------------------------------------------------------------

GSM_IGNORE = [",", r"\$", r"(?s).*#### ", r"\.$"]


def _gsm_row(r: dict) -> dict:
    # a bad row at load, before any generation is spent on it (a number has no "#### " solution)
    if not isinstance(r["question"], str) or not isinstance(r["answer"], str):
        raise TypeError(f"'question' and 'answer' must be strings, got {type(r['question']).__name__} and "
                        f"{type(r['answer']).__name__}")
    return {"question": r["question"], "answer": r["answer"]}


def gsm_clean(s: str) -> str:
    for rx in GSM_IGNORE:
        s = re.sub(rx, "", s)
    return s.strip()


def extract_strict(text: str) -> str:
    m = re.search(r"#### (\-?[0-9\.\,]+)", text)
    return m.group(1).strip() if m else INVALID


def extract_flexible(text: str) -> str:
    ms = re.findall(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", text)
    if not ms:
        return INVALID
    last = ms[-1]
    return next((g for g in last if g), INVALID).strip()


@register_task("gsm8k")
class GSM8K(GenerateTask):
    eval_splits, fewshot_split = ("test", "train"), "train"
    num_fewshot = 5
    stop = ("Question:", "</s>", "<|im_end|>")
    max_new_tokens = 256

    def _load(self, data_dir, split):
        base = locate(data_dir, ["gsm8k", "grade-school-math", "GSM8K"], "gsm8k")
        files = (find_split(base / "main", split) if (base / "main").is_dir() else []) \
            or find_split(base, split) or find_split(base / "data", split)
        return convert_rows(_rows(self, files), _gsm_row, self.bad_rows)

    def text(self, item):
        return f"Question: {item['question']}\nAnswer:"

    def target(self, item):
        return item["answer"]

    def process(self, item, results):
        gold = gsm_clean(item["answer"])
        out = results[0]
        return {"exact_match_strict": float(gsm_clean(extract_strict(out)) == gold),
                "exact_match_flexible": float(gsm_clean(extract_flexible(out)) == gold)}


# --- MATH (Hendrycks) -------------------------------------------------------------------------

MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")


@register_task("math")
class MATH(GenerateTask):
    eval_splits, fewshot_split = ("test",), "train"
    num_fewshot = 4
    stop = ("Problem:",)
    max_new_tokens = 512

    def _load(self, data_dir, split):
        base = locate(data_dir, ["hendrycks_math", "MATH", "competition_math"], "math")
        items = []
        for subj in MATH_SUBJECTS:
            d = base / subj
            files = find_split(d, split) if d.is_dir() else []
            if not files and (base / split / subj).is_dir():  # original: MATH/test/algebra/1.json
                files = sorted((base / split / subj).glob("*.json"), key=lambda p: (len(p.stem), p.stem))
                rows = [(str(f), r) for f in files for _, r in read_rows(f, self.bad_rows)]
            else:
                rows = list(_rows(self, files))
            items += convert_rows(rows, self.convert, self.bad_rows)
        return items

    def convert(self, r):
        boxed = last_boxed(r["solution"])
        if boxed is None:
            raise ValueError("solution has no \\boxed{} answer")
        return {"problem": r["problem"], "answer": boxed, "level": r.get("level"), "type": r.get("type")}

    def text(self, item):
        return f"Problem: {item['problem']}\nAnswer:"

    def target(self, item):
        return item["answer"]

    def process(self, item, results):
        return {"exact_match": float(is_equiv(results[0].strip(), item["answer"]))}


# --- HRM8K ------------------------------------------------------------------------------------

HRM8K_SUBSETS = ("GSM8K", "KSM", "MATH", "MMMLU", "OMNI_MATH")


def final_answer(text: str) -> str:
    """Last \\boxed{} content, else the last number (commas dropped)."""
    b = last_boxed(text)
    if b is not None:
        return b
    nums = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return nums[-1].replace(",", "") if nums else INVALID


def _scored(completion: str, gold: str) -> float:
    """1.0 when the completion's final answer matches `gold` (kollm.answers, the GRPO reward's matcher)."""
    pred = final_answer(completion)
    return float(pred != INVALID and answers_match(str(gold), pred))


class HRM8K(GenerateTask):
    lang = "ko"
    parallel_key = "pair_id"
    stop = ("문제:", "Question:", "</s>", "<|im_end|>")
    max_new_tokens = 512

    def __init__(self, chat: bool = False, **options) -> None:
        super().__init__(**options)
        self.chat = chat  # `--task-arg hrm8k_ko:chat=true`: the question alone as a user turn (a chat model)

    def load(self, data_dir):
        base = locate(data_dir, ["HRM8K", "hrm8k"], self.name)
        items = []
        for sub in HRM8K_SUBSETS:
            files = find_split(base / sub, "test") if (base / sub).is_dir() else []
            rows = list(_rows(self, files))
            items += convert_rows(((w, {**r, "_i": i, "_sub": sub}) for i, (w, r) in enumerate(rows)),
                                  self.convert, self.bad_rows)
        if not items:
            raise FileNotFoundError(f"{base}: no <subset>/test* files for {', '.join(HRM8K_SUBSETS)}")
        return items

    def convert(self, r):
        q = r["question"] if self.lang == "ko" else r["original"]
        return {"question": q, "answer": str(r["answer"]), "subset": r["_sub"], "pair_id": f"{r['_sub']}:{r['_i']}"}

    def text(self, item):
        if self.chat:
            return item["question"]
        return f"문제: {item['question']}\n풀이:" if self.lang == "ko" else f"Question: {item['question']}\nAnswer:"

    def process(self, item, results):
        return {"exact_match": _scored(results[0], item["answer"])}


register_task("hrm8k_ko", "hrm8k")(HRM8K)
register_task("hrm8k_en")(type("HRM8K_en", (HRM8K,), {"lang": "en"}))


# --- BBH --------------------------------------------------------------------------------------

@register_task("bbh")
class BBH(GenerateTask):
    """Zero-shot BBH (lm-eval's `bbh_zeroshot`): "Q: …\\nA:", first line, exact match."""

    stop = ("</s>", "Q:", "<|im_end|>", "\n\n")
    max_new_tokens = 256

    def load(self, data_dir):
        base = locate(data_dir, ["bbh", "BBH", "BIG-Bench-Hard"], "bbh")
        if (base / "bbh").is_dir():
            base = base / "bbh"
        items = []
        for sub in sorted(p for p in base.iterdir()):
            if sub.is_dir():
                files = find_split(sub, "test")
                name = sub.name
            elif sub.suffix == ".json":
                files, name = [sub], sub.stem
            else:
                continue
            items += convert_rows(_rows(self, files), lambda r, n=name: {"input": r["input"], "target": r["target"],
                                                                        "subtask": n}, self.bad_rows)
        if not items:
            raise FileNotFoundError(f"{base}: no BBH subtasks (<subtask>/test*.parquet or <subtask>.json)")
        return items

    def text(self, item):
        return f"Q: {item['input']}\nA:"

    def process(self, item, results):
        return {"exact_match": float(results[0].strip() == item["target"].strip())}


@register_task("bbh_cot")
class BBHCoT(BBH):
    """3-shot chain of thought (the report's setting; lm-eval's `bbh_cot_fewshot`): the
    original release's `cot-prompts/<subtask>.txt` (text after the `-----` line) precedes
    "Q: …\nA: Let's think step by step."; the answer is what follows the last "the answer is"."""

    stop = ("</s>", "Q:", "<|im_end|>")
    max_new_tokens = 512

    def load(self, data_dir):
        items = super().load(data_dir)
        base = locate(data_dir, ["bbh", "BBH", "BIG-Bench-Hard"], "bbh_cot")
        prompts = next((d for d in (base / "cot-prompts", base.parent / "cot-prompts") if d.is_dir()), None)
        if prompts is None:
            raise FileNotFoundError(f"{base}: no cot-prompts/ folder (BIG-Bench-Hard's 3-shot CoT prompts)")
        cache: dict[str, str] = {}
        for it in items:
            if it["subtask"] not in cache:
                f = prompts / f"{it['subtask']}.txt"
                if not f.is_file():
                    raise FileNotFoundError(f"{f}: no CoT prompt for subtask {it['subtask']}")
                cache[it["subtask"]] = f.read_text(encoding="utf-8").split("-----", 1)[-1].strip()
            it["cot_prompt"] = cache[it["subtask"]]
        return items

    def text(self, item):
        return f"{item['cot_prompt']}\n\nQ: {item['input']}\nA: Let's think step by step."

    def process(self, item, results):
        found = re.findall(r"the answer is (.*?)\.?\s*$", results[0].strip(), flags=re.IGNORECASE | re.MULTILINE)
        pred = found[-1].strip() if found else INVALID
        return {"exact_match": float(pred == item["target"].strip())}


# --- the Trillion report's CoT prompt (its Figure 7) for GSM8K and MATH ------------------------

TRILLION_COT = "Q: {q}\nPut your answer within \\boxed{{}}. Let's think step by step."


@register_task("gsm8k_cot")
class GSM8KCoT(GSM8K):
    """Trillion 7B's 0-shot CoT prompt as a chat turn; the answer is the last \\boxed{} (else the
    last number). Not an lm-eval task."""

    num_fewshot, chat, stop, max_new_tokens = 0, True, (), 1024

    def text(self, item):
        return TRILLION_COT.format(q=item["question"])

    def process(self, item, results):
        return {"exact_match": _scored(results[0], gsm_clean(item["answer"]))}


@register_task("math_cot")
class MATHCoT(MATH):
    num_fewshot, chat, stop, max_new_tokens = 0, True, (), 1024

    def text(self, item):
        return TRILLION_COT.format(q=item["problem"])

    def process(self, item, results):
        return {"exact_match": _scored(results[0], item["answer"])}
