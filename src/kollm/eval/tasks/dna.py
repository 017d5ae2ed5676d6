"""The DNA 1.0 report's benchmarks beyond KMMLU/KoBEST/MMLU/GSM8K/BBH/MATH: BELEBELE (Korean and
English), KMMLU-Hard and CSAT-QA, each in its released schema with lm-evaluation-harness's prompt
(0.4.13: `belebele_{kor_Hang,eng_Latn}`, `kmmlu_hard_*`, `csatqa_*`), scored by log-likelihood of
the answer labels like every multiple-choice task here.

- BELEBELE (facebook/belebele): rows `{flores_passage, question, mc_answer1..4, correct_answer_num}`
  in `belebele/<lang>.jsonl` (the release and the HF repo's `data/`), or `belebele/<lang>/test*.parquet`.
  Prompt "P: …\\nQ: …\\nA: …\\nB: …\\nC: …\\nD: …\\nAnswer:" (lm-eval 0.4.13; later versions write a full-width colon), labels
  A-D; shots are the first k rows of the same test split, never the item itself (lm-eval's first_n).
- KMMLU-Hard (HAERAE-HUB/KMMLU-HARD): `KMMLU-HARD/data/<subject>-hard-<split>.csv` or
  `<subject>-<split>.csv` (question, A-D, answer 1-4 as lm-eval 0.4.13 reads it; a letter A-D also reads); KMMLU's prompt ("정답："),
  shots from the same subject's dev split.
- CSAT-QA (HAERAE-HUB/csatqa): rows `{question, context, option#1..5, gold (1-5), Category}` in
  any json/jsonl/parquet under `csatqa/`; lm-eval's instruction prompt and "(1)".."(5)" labels;
  per-category accuracy (WR, GR, RCS, RCSS, RCH, LI) as `category/<name>`.

- MMLU-Pro (TIGER-Lab/MMLU-Pro): `MMLU-Pro/data/{test,validation}-*.parquet`; lm-eval's 5-shot
  chain of thought (generation, not log-likelihood), `exact_match` and per-category.
"""

from __future__ import annotations

import re
from pathlib import Path

from kollm.eval.task import register_task
from kollm.eval.tasks.common import (
    EXTS,
    GenerateTask,
    MultipleChoiceTask,
    convert_rows,
    find_split,
    locate,
    read_rows,
)
from kollm.eval.tasks.knowledge import KMMLU, LETTERS


class Belebele(MultipleChoiceTask):
    lang = ""
    eval_splits, fewshot_split = ("test",), "test"

    @property
    def expected_files(self):
        return f"belebele/{self.lang}.jsonl or belebele/{self.lang}/test*.parquet"

    def _load(self, data_dir, split):
        base = locate(data_dir, ["belebele", "Belebele"], self.name)
        files = [p for p in (base / f"{self.lang}.jsonl", base / "data" / f"{self.lang}.jsonl") if p.is_file()]
        files = files or find_split(base / self.lang, split)
        return convert_rows((r for f in files for r in read_rows(f, self.bad_rows)), self.convert, self.bad_rows)

    def convert(self, r):
        gold = ["1", "2", "3", "4"].index(str(r["correct_answer_num"]).strip())
        return {"passage": r["flores_passage"], "question": r["question"],
                "options": [r[f"mc_answer{i}"] for i in (1, 2, 3, 4)], "gold": gold}

    def text(self, item):
        opts = "".join(f"\n{L}: {o}" for L, o in zip(LETTERS, item["options"]))
        return f"P: {item['passage']}\nQ: {item['question'].strip()}{opts}\nAnswer:"

    def choices(self, item):
        return list(LETTERS)

    def select_fewshot(self, item, pool, k, rng):
        return [p for p in pool[: k + 1] if p != item][:k]  # lm-eval first_n on the evaluated split


register_task("belebele_ko")(type("Belebele_ko", (Belebele,), {"lang": "kor_Hang"}))
register_task("belebele_en")(type("Belebele_en", (Belebele,), {"lang": "eng_Latn"}))


@register_task("kmmlu_hard")
class KMMLUHard(KMMLU):
    expected_files = "KMMLU-HARD/data/*-hard-test.csv"

    def _load(self, data_dir, split):
        base = locate(data_dir, ["KMMLU-HARD", "KMMLU-Hard", "kmmlu_hard"], "kmmlu_hard")
        d = base / "data" if (base / "data").is_dir() else base
        items = []
        for f in sorted(d.glob(f"*-{split}.csv")):
            subject = f.name[: -len(f"-{split}.csv")].removesuffix("-hard")
            items += convert_rows(read_rows(f, self.bad_rows), lambda r, s=subject: self.from_hf(r, s), self.bad_rows)
        return items

    def from_hf(self, r, subject):
        a = str(r["answer"]).strip()
        gold = LETTERS.index(a) if a in LETTERS and a else int(a) - 1
        if not 0 <= gold < 4:
            raise ValueError(f"KMMLU-Hard answer must be A-D or 1-4, got {r['answer']!r}")
        return {"question": r["question"], "options": [r[L] for L in LETTERS], "gold": gold, "subject": subject}


CSATQA_LABELS = ["(1)", "(2)", "(3)", "(4)", "(5)"]


@register_task("csatqa")
class CSATQA(MultipleChoiceTask):
    def load(self, data_dir):
        base = locate(data_dir, ["csatqa", "CSAT-QA", "CSATQA"], "csatqa")
        files = [base] if base.is_file() else sorted(p for e in EXTS for p in Path(base).rglob(f"*.{e}"))
        items = convert_rows((r for f in files for r in read_rows(f, self.bad_rows)), self.convert, self.bad_rows)
        if not items:
            bad = self.bad_rows
            raise (ValueError(f"{base}: {len(bad)} rows rejected: first error {bad[0]}") if bad
                   else FileNotFoundError(f"{base}: no csatqa rows (json/jsonl/parquet)"))
        return items

    def convert(self, r):
        gold = int(r["gold"]) - 1
        if not 0 <= gold < 5:
            raise ValueError(f"gold must be 1-5, got {r['gold']!r}")
        opts = "\n".join(f"({i}) {r[f'option#{i}']}" for i in range(1, 6))
        # lm-eval csatqa/utils.py _process_doc, character for character
        query = (f"다음을 읽고 정답으로 알맞은 것을 고르시요.\n### Context: {r['context']}\n### Question: "
                 f"{r['question']}\n### Options:\n{opts}\n### Answer: 주어진 문제의 정답은")
        return {"query": query, "gold": gold, "category": r.get("Category")}

    def choices(self, item):
        return CSATQA_LABELS

    def process(self, item, results):
        m = super().process(item, results)
        if item.get("category"):
            m[f"category/{item['category']}"] = m["acc"]
        return m


# --- MMLU-Pro (TIGER-Lab/MMLU-Pro), as lm-eval's `mmlu_pro`: 5-shot chain of thought ----------------

PRO_LETTERS = "ABCDEFGHIJ"
_PRO_ANSWER = re.compile(r"answer is \(?([ABCDEFGHIJ])\)?")


@register_task("mmlu_pro")
class MMLUPro(GenerateTask):
    """Rows `{question_id, question, options (up to 10), answer (letter), answer_index, cot_content,
    category}` in `MMLU-Pro/data/{test,validation}-*.parquet`. lm-eval's prompt: the category's
    description, the first k validation rows of the same category with their worked `cot_content`,
    then "Question:\\n…\\nOptions:\\nA. …\\nAnswer: Let's think step by step."; greedy until
    "Question:"; the first "answer is (X)" is the prediction, exact match with the gold letter."""

    eval_splits, fewshot_split = ("test",), "validation"
    expected_files = "MMLU-Pro/data/test-*.parquet"
    num_fewshot = 5
    stop = ("Question:",)
    max_new_tokens = 2048

    def _load(self, data_dir, split):
        base = locate(data_dir, ["MMLU-Pro", "mmlu_pro", "mmlu-pro"], "mmlu_pro")
        files = find_split(base / "data", split) if (base / "data").is_dir() else []
        files = files or find_split(base, split)
        return convert_rows((r for f in files for r in read_rows(f, self.bad_rows)), self.convert, self.bad_rows)

    def convert(self, r):
        opts = list(r["options"])
        gold = str(r["answer"]).strip()
        if not opts or gold not in PRO_LETTERS[: len(opts)]:
            raise ValueError(f"answer {r['answer']!r} is not one of the {len(opts)} options' letters")
        return {"question": r["question"], "options": opts, "answer": gold, "category": r["category"],
                "cot": r.get("cot_content") or ""}

    def description(self, item):
        return (f"The following are multiple choice questions (with answers) about {item['category']}. Think step by "
                "step and then finish your answer with \"the answer is (X)\" where X is the correct letter choice.\n")

    def text(self, item):
        opts = "".join(f"{L}. {o.strip()}\n" for L, o in zip(PRO_LETTERS, item["options"]))
        return f"Question:\n{item['question']}\nOptions:\n{opts}Answer: Let's think step by step."

    def target(self, item):
        return item["cot"].replace("A: Let's think step by step. ", "")

    def context(self, item, fewshot=()):
        return self.description(item) + super().context(item, fewshot)

    def select_fewshot(self, item, pool, k, rng):
        return [p for p in pool if p["category"] == item["category"]][:k]  # lm-eval's first_n per category

    def process(self, item, results):
        m = _PRO_ANSWER.search(results[0])
        ok = float(bool(m) and m.group(1) == item["answer"])
        return {"exact_match": ok, f"category/{item['category']}": ok}
