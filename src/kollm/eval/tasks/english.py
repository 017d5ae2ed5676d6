"""English (and XWinograd's multilingual) multiple choice: HellaSwag, ARC-Challenge, TruthfulQA
mc1/mc2, XWinograd en/jp/zh. Prompts and metrics are lm-evaluation-harness's.

Layouts (HF repo name / original release):
- HellaSwag: `hellaswag/data/validation-*.parquet` (Rowan/hellaswag) or `hellaswag/hellaswag_val.jsonl`.
- ARC: `ai2_arc/ARC-Challenge/test-*.parquet` (allenai/ai2_arc: choices {text, label}) or
  `ARC-V1-Feb2018-2/ARC-Challenge/ARC-Challenge-Test.jsonl` (question {stem, choices}).
- TruthfulQA: `truthful_qa/multiple_choice/validation-*.parquet` (targets {choices, labels}) or
  the original `TruthfulQA/data/mc_task.json` (targets {choice: label}).
- XWinograd: `xwinograd/data/<lang>/test.jsonl` (Muennighoff/xwinograd) or the release's
  `xwinograd/dataset.tsv` (yandex-research/crosslingual_winograd, all languages in one file).
"""

from __future__ import annotations

import json
import math
import re

from kollm.eval.task import register_task
from kollm.eval.tasks.common import MultipleChoiceTask, convert_rows, find_split, locate, read_rows


def _rows(task, files):
    return (r for f in files for r in read_rows(f, task.bad_rows))


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


@register_task("hellaswag")
class HellaSwag(MultipleChoiceTask):
    eval_splits, fewshot_split = ("validation",), "train"

    def _load(self, data_dir, split):
        base = locate(data_dir, ["hellaswag", "HellaSwag"], "hellaswag")
        files = find_split(base / "data", split) if (base / "data").is_dir() else []
        files = files or find_split(base, split, stem_prefix="hellaswag_")
        return convert_rows(_rows(self, files), self.convert, self.bad_rows)

    def convert(self, r):
        ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
        return {"query": _hellaswag_clean(r["activity_label"] + ": " + ctx),
                "choices": [_hellaswag_clean(e) for e in r["endings"]], "gold": int(r["label"])}


@register_task("arc_challenge")
class ARCChallenge(MultipleChoiceTask):
    eval_splits, fewshot_split = ("test",), "train"
    subset = "ARC-Challenge"

    def _load(self, data_dir, split):
        base = locate(data_dir, ["ai2_arc", "ARC-V1-Feb2018-2", "arc"], self.name)
        d = base / self.subset
        files = find_split(d, split) or find_split(d, split.capitalize(), stem_prefix=f"{self.subset}-")
        return convert_rows(_rows(self, files), self.convert, self.bad_rows)

    def convert(self, r):
        if isinstance(r["question"], dict):  # original: question {stem, choices: [{text, label}]}
            q, texts = r["question"]["stem"], [c["text"] for c in r["question"]["choices"]]
            labels = [c["label"] for c in r["question"]["choices"]]
        else:
            q, texts, labels = r["question"], list(r["choices"]["text"]), list(r["choices"]["label"])
        return {"query": f"Question: {q}\nAnswer:", "choices": texts, "gold": labels.index(r["answerKey"]),
                "id": r.get("id")}


TQA_PROMPT = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)


def _targets(t) -> tuple[list[str], list[int]]:
    if "choices" in t:
        return list(t["choices"]), [int(x) for x in t["labels"]]
    return list(t), [int(v) for v in t.values()]  # original: {choice: label}


class TruthfulQA(MultipleChoiceTask):
    """Fixed 6-shot QA prompt (no sampled shots). mc1: the single true answer is choice 0.
    mc2: normalised probability mass on the true answers."""

    key = "mc1_targets"

    def load(self, data_dir):
        base = locate(data_dir, ["truthful_qa", "TruthfulQA", "truthfulqa"], self.name)
        files = (find_split(base / "multiple_choice", "validation") if (base / "multiple_choice").is_dir() else [])
        files = files or [p for p in (base / "data" / "mc_task.json", base / "mc_task.json") if p.is_file()]
        items = convert_rows(_rows(self, files), self.convert, self.bad_rows)
        if not items:
            raise FileNotFoundError(f"{base}: no multiple_choice/validation* nor data/mc_task.json")
        return items

    def convert(self, r):
        choices, labels = _targets(r[self.key])
        return {"question": r["question"], "query": f"{TQA_PROMPT}\n\nQ: {r['question']}\nA:", "choices": choices,
                "labels": labels, "gold": labels.index(1)}


@register_task("truthfulqa_mc1")
class TruthfulQAMC1(TruthfulQA):
    def process(self, item, results):
        return {"acc": super().process(item, results)["acc"]}


@register_task("truthfulqa_mc2")
class TruthfulQAMC2(TruthfulQA):
    key = "mc2_targets"

    def process(self, item, results):
        split = item["labels"].index(0)  # true answers come first in the official files
        p = [math.exp(r[0]) for r in results]
        return {"acc": sum(p[:split]) / (sum(p) or 1.0)}


class XWinograd(MultipleChoiceTask):
    """Partial scoring (lm-eval's winogrande form): the blank is filled with each option, and the
    same remainder of the sentence is scored after each filled-in prefix."""

    lang = ""

    def load(self, data_dir):
        base = locate(data_dir, ["xwinograd", "XWinograd", "crosslingual_winograd"], self.name)
        tsv = base if base.is_file() else base / "dataset.tsv"
        if tsv.is_file() and tsv.suffix == ".tsv":  # the release (yandex-research/crosslingual_winograd)
            files, rows = [tsv], self._release_rows(tsv)
        else:
            d = base / "data" / self.lang if (base / "data").is_dir() else base / self.lang
            files = find_split(d, "test")
            rows = list(_rows(self, files))
            if not files:
                raise FileNotFoundError(f"{d}: no test split (nor {base / 'dataset.tsv'})")
        items = convert_rows(rows, self.convert, self.bad_rows)
        if not items:
            bad = self.bad_rows
            raise ValueError(f"{', '.join(map(str, files))}: " + (f"{len(bad)} rows rejected: first error {bad[0]}"
                                                                  if bad else f"no {self.lang} rows"))
        return items

    def _release_rows(self, path):
        """dataset.tsv, no header: lang, source, English reference, raw text, JSON tokens, JSON pronoun
        [text, [start, end), tokens], JSON candidates [[text, range, tokens, correct], ...]. The pronoun
        becomes the blank `_` of the HF layout (found through the token offsets in the raw text), the
        candidates option1/option2 in file order, `answer` the 1-based correct one."""
        langs = {"jp": ("jp", "ja")}.get(self.lang, (self.lang,))
        out = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            cols = line.split("\t")
            if not line.strip() or cols[0] not in langs:
                continue
            where = f"{path}:{n}"
            try:
                if len(cols) != 7:
                    raise ValueError(f"{len(cols)} tab-separated columns, expected 7")
                text, tokens, pron, cands = cols[3], json.loads(cols[4]), json.loads(cols[5]), json.loads(cols[6])
                start, end = _char_span(text, tokens, *pron[1])
                if len(cands) != 2 or sum(bool(c[3]) for c in cands) != 1:
                    raise ValueError("needs two candidates, exactly one correct")
                out.append((where, {"sentence": text[:start] + "_" + text[end:], "option1": cands[0][0],
                                    "option2": cands[1][0], "answer": 1 if cands[0][3] else 2}))
            except (ValueError, IndexError, TypeError) as e:
                self.bad_rows.append(f"{where}: {type(e).__name__}: {e}")
        return out

    def convert(self, r):
        s = r["sentence"]
        i = s.index("_")
        gold = int(r["answer"]) - 1
        if gold not in (0, 1):
            raise ValueError(f"answer must be 1 or 2, got {r['answer']!r}")
        return {"prefixes": [s[:i] + r["option1"], s[:i] + r["option2"]], "rest": s[i + 1:].strip(), "gold": gold}

    def requests(self, item, fewshot=()):
        from kollm.eval.task import Request

        shots = "".join(f"{s['prefixes'][s['gold']]} {s['rest']}\n\n" for s in fewshot)
        return [Request("loglikelihood", (shots + p, " " + item["rest"])) for p in item["prefixes"]]

    def process(self, item, results):
        lls = [r[0] for r in results]
        return {"acc": float(max(range(len(lls)), key=lambda j: (lls[j], -j)) == item["gold"])}


for _lang in ("en", "jp", "zh"):
    register_task(f"xwinograd_{_lang}")(type(f"XWinograd_{_lang}", (XWinograd,), {"lang": _lang}))


def _char_span(text: str, tokens: list[str], t0: int, t1: int) -> tuple[int, int]:
    """Character span of tokens [t0, t1) in `text`: tokens are found left to right (NLTK's
    tokens are substrings of the text, apart from quotes it rewrites as `` and '', skipped)."""
    pos, starts, ends = 0, [], []
    for tok in tokens:
        i = text.find(tok, pos)
        if i < 0:  # a rewritten quote: no offset, the cursor stays
            starts.append(None)
            ends.append(None)
            continue
        starts.append(i)
        ends.append(i + len(tok))
        pos = i + len(tok)
    if not 0 <= t0 < t1 <= len(tokens) or starts[t0] is None or ends[t1 - 1] is None:
        raise ValueError(f"pronoun tokens [{t0}, {t1}) not found in the text")
    return starts[t0], ends[t1 - 1]
