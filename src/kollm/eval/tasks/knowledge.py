"""Knowledge multiple choice: MMLU, KMMLU, Global-MMLU (ko/en/ja/zh), HAE-RAE, GPQA.

Prompts are lm-evaluation-harness's (`mmlu`, `kmmlu`, `global_mmlu_full_*`, `haerae`,
`gpqa_main_zeroshot`): the question, lettered options, "Answer:" (KMMLU "정답："), and the
letters scored as continuations. Few-shot examples come from the dev split of the same subject
(MMLU: the first k, as lm-eval's `first_n`; others: random). Layouts:

- MMLU: HF `cais/mmlu` (`mmlu/all/<split>-*.parquet`: question, subject, choices, answer int) or
  the original CSVs (`mmlu/data/<split>/<subject>_<split>.csv` or `mmlu/<split>/...`, header-less
  with a letter answer; a copy with a `question,choice0..3,answer` header reads too).
- KMMLU: HF `HAERAE-HUB/KMMLU` (`KMMLU/data/<Subject>-<split>.csv`, answer 1–4).
- Global-MMLU: HF `CohereForAI/Global-MMLU` (`Global-MMLU/<lang>/<split>-*.parquet`, answer a
  letter; `sample_id` pairs the languages for cross-lingual consistency).
- HAE-RAE: HF `HAERAE-HUB/HAE_RAE_BENCH` (`HAE_RAE_BENCH/<subset>/test*.parquet`: query with the
  options inside, answer "(A)"…).
- GPQA: `Idavidrein/gpqa` (`gpqa/gpqa_main.csv`, also inside the original `dataset/` folder).
  GPQA has one split; k-shot (the Trillion suite's `gpqa_main:4`) draws shots from it as lm-eval's
  `gpqa_main_n_shot` does (random, never the item itself) and uses that task's prompt.
"""

from __future__ import annotations

import random
import re

from kollm.eval.task import register_task
from kollm.eval.tasks.common import MultipleChoiceTask, convert_rows, find_split, locate, read_rows

LETTERS = "ABCD"
MMLU_COLUMNS = ("question", "choice0", "choice1", "choice2", "choice3", "answer")


def _letter_or_index(v) -> int:
    s = str(v).strip()
    if s in LETTERS and s:
        return LETTERS.index(s)
    i = int(s)
    if not 0 <= i < 4:
        raise ValueError(f"answer index out of range: {v!r}")
    return i


class LetteredMC(MultipleChoiceTask):
    answer_cue = "Answer:"
    first_n_shots = False  # lm-eval's first_n sampler (MMLU) instead of random

    def text(self, item):
        opts = "".join(f"\n{L}. {c}" for L, c in zip(LETTERS, item["options"]))
        return f"{item['question'].strip()}{opts}\n{self.answer_cue}"

    def choices(self, item):
        return list(LETTERS[: len(item["options"])])

    def select_fewshot(self, item, pool, k, rng):
        same = [p for p in pool if p.get("subject") == item.get("subject") and p != item]
        if self.first_n_shots:
            return same[:k]
        return super().select_fewshot(item, same, k, rng)


@register_task("mmlu")
class MMLU(LetteredMC):
    eval_splits, fewshot_split = ("test", "dev"), "dev"
    expected_files = "mmlu/all/*.parquet or mmlu/data/test/*.csv"
    first_n_shots = True
    num_fewshot = 5

    def description(self, item):
        return f"The following are multiple choice questions (with answers) about {item['subject'].replace('_', ' ')}.\n\n"

    def _load(self, data_dir, split):
        base = locate(data_dir, ["mmlu", "MMLU"], "mmlu")
        hf = find_split(base / "all", split) if (base / "all").is_dir() else []
        if hf:
            return convert_rows((r for f in hf for r in read_rows(f, self.bad_rows)), self.from_hf, self.bad_rows)
        names = ("dev", "val") if split in ("dev", "validation") else (split,)
        for name in names:
            for d in (base / "data" / name, base / name):
                files = sorted(d.glob(f"*_{name}.csv")) if d.is_dir() else []
                if not files:
                    continue
                items = []
                for f in files:
                    subject = f.name[: -len(f"_{name}.csv")]
                    rows = read_rows(f, self.bad_rows, header=MMLU_COLUMNS)
                    items += convert_rows(rows, lambda r, s=subject: self.from_original(r, s), self.bad_rows)
                return items
        return []

    def from_hf(self, r):
        if len(r["choices"]) != 4:
            raise ValueError(f"{len(r['choices'])} choices, expected 4")
        return {"question": r["question"], "options": list(r["choices"]), "gold": int(r["answer"]),
                "subject": r["subject"]}

    def from_original(self, r, subject):
        return {"question": r["question"], "options": [r[f"choice{i}"] for i in range(4)],
                "gold": _letter_or_index(r["answer"]), "subject": subject}


@register_task("kmmlu")
class KMMLU(LetteredMC):
    eval_splits, fewshot_split, expected_files = ("test",), "dev", "KMMLU/data/*-test.csv"
    answer_cue = "정답："  # lm-eval's full-width colon

    def _load(self, data_dir, split):
        base = locate(data_dir, ["KMMLU", "kmmlu"], "kmmlu")
        files = sorted((base / "data").glob(f"*-{split}.csv")) or sorted(base.glob(f"*-{split}.csv"))
        items = []
        for f in files:
            subject = f.name[: -len(f"-{split}.csv")]
            items += convert_rows(read_rows(f, self.bad_rows), lambda r, s=subject: self.from_hf(r, s), self.bad_rows)
        return items

    def from_hf(self, r, subject):
        gold = int(r["answer"]) - 1
        if not 0 <= gold < 4:
            raise ValueError(f"KMMLU answer must be 1-4, got {r['answer']!r}")
        return {"question": r["question"], "options": [r[L] for L in LETTERS], "gold": gold, "subject": subject}


class GlobalMMLU(LetteredMC):
    eval_splits, fewshot_split = ("test",), "dev"
    lang = ""
    parallel_key = "sample_id"

    @property
    def expected_files(self):
        return f"Global-MMLU/{self.lang}/test*.parquet"

    def _load(self, data_dir, split):
        base = locate(data_dir, ["Global-MMLU", "global_mmlu", "Global-MMLU-Lite"], f"global_mmlu_{self.lang}")
        files = find_split(base / self.lang, split)
        return convert_rows((r for f in files for r in read_rows(f, self.bad_rows)), self.from_hf, self.bad_rows)

    def from_hf(self, r):
        return {"question": r["question"], "options": [r[f"option_{c}"] for c in "abcd"],
                "gold": _letter_or_index(r["answer"]), "subject": r.get("subject"), "sample_id": r["sample_id"]}


for _lang in ("ko", "en", "ja", "zh"):
    register_task(f"global_mmlu_{_lang}")(type(f"GlobalMMLU_{_lang}", (GlobalMMLU,), {"lang": _lang}))


HAERAE_SUBSETS = ("general_knowledge", "history", "loan_words", "rare_words", "standard_nomenclature")


@register_task("haerae")
class HAERAE(MultipleChoiceTask):
    """The query already lists the options; the choices are the labels "(A)"…"(E)"."""

    def load(self, data_dir):
        base = locate(data_dir, ["HAE_RAE_BENCH", "HAE_RAE_BENCH_1.0", "haerae"], "haerae")
        items = []
        for sub in HAERAE_SUBSETS:
            files = find_split(base / sub, "test") if (base / sub).is_dir() else []
            rows = (r for f in files for r in read_rows(f, self.bad_rows))
            items += convert_rows(rows, lambda r, s=sub: self.from_hf(r, s), self.bad_rows)
        if not items:
            raise FileNotFoundError(f"{base}: no <subset>/test* files for {', '.join(HAERAE_SUBSETS)}")
        return items

    def few_shot_items(self, data_dir):
        return self.load(data_dir)  # lm-eval: fewshot_split test (the sampler skips the item itself)

    def from_hf(self, r, subset):
        labels = ["(A)", "(B)", "(C)", "(D)", "(E)"]
        return {"query": r["query"], "gold": labels.index(r["answer"].strip()), "subject": subset}

    def choices(self, item):
        return ["(A)", "(B)", "(C)", "(D)", "(E)"]


def _gpqa_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


@register_task("gpqa_main")
class GPQA(MultipleChoiceTask):
    """Choices are shuffled once per item with a fixed seed (lm-eval shuffles with Python's
    global RNG seeded 0, in file order — the same draw sequence as here)."""

    variant = "main"

    def load(self, data_dir):
        base = locate(data_dir, ["gpqa", "GPQA"], f"gpqa_{self.variant}")
        f = next((p for p in (base / f"gpqa_{self.variant}.csv", base / "dataset" / f"gpqa_{self.variant}.csv")
                  if p.is_file()), None)
        if f is None:
            raise FileNotFoundError(f"{base}: no gpqa_{self.variant}.csv")
        rng = random.Random(0)
        return convert_rows(read_rows(f, self.bad_rows), lambda r: self.from_row(r, rng), self.bad_rows)

    def from_row(self, r, rng):
        correct = _gpqa_clean(r["Correct Answer"])
        opts = [_gpqa_clean(r[f"Incorrect Answer {i}"]) for i in (1, 2, 3)] + [correct]
        rng.shuffle(opts)
        return {"question": r["Question"], "options": opts, "gold": opts.index(correct)}

    N_SHOT_DESCRIPTION = ("Here are some example questions from experts. Answer the final question yourself, "
                          "following the format of the previous questions exactly.\n")

    def few_shot_items(self, data_dir):
        return self.load(data_dir)  # lm-eval gpqa_*_n_shot: fewshot_split train = the only split

    def text(self, item):
        opts = "".join(f"\n({L}) {c}" for L, c in zip(LETTERS, item["options"]))
        return f"What is the correct answer to this question:{item['question']}\nChoices:{opts}\nAnswer:"

    def n_shot_text(self, item):
        opts = "".join(f"\n({L}) {c}" for L, c in zip(LETTERS, item["options"]))
        return f"Question: {item['question']}\nChoices:{opts}\nAnswer:"

    def context(self, item, fewshot=()):
        """0-shot: lm-eval's gpqa_*_zeroshot prompt; k-shot: gpqa_*_n_shot's (description, then
        `Question: … Answer: (X)` shots)."""
        if not fewshot:
            return self.text(item)
        shots = "".join(self.n_shot_text(s) + self.target_delimiter + self.choices(s)[s["gold"]] + self.fewshot_delimiter
                        for s in fewshot)
        return self.N_SHOT_DESCRIPTION + shots + self.n_shot_text(item)

    def choices(self, item):
        return [f"({L})" for L in LETTERS]


@register_task("gpqa_diamond")
class GPQADiamond(GPQA):
    variant = "diamond"
