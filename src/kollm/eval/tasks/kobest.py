"""KoBEST (Kim et al. 2022): BoolQ, COPA, HellaSwag, SentiNeg, WiC — Korean multiple choice.

Prompts and metrics (acc, macro F1; acc_norm for HellaSwag) are lm-evaluation-harness's
`kobest_*` tasks. Reads the Hugging Face copy `skt/kobest_v1` (`kobest_v1/<task>/<split>*.parquet`
or jsonl; fields paragraph/question/label, premise/alternative_1/2, ...) and the original
SKT-LSL/KoBEST_datarepo TSVs (`kobest/<Task>/<split>.tsv`; other column names, COPA's answer
1-based, BoolQ/WiC answers "True"/"False"). The test split is scored where present, else dev.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kollm.eval.task import argmax, register_task
from kollm.eval.tasks.common import (
    MultipleChoiceTask,
    convert_rows,
    find_split,
    locate,
    macro_f1,
    read_rows,
)


def _bool(v) -> int:
    if isinstance(v, bool):
        return int(v)
    s = str(v).strip().lower()  # the original train files mix True and TRUE
    if s in ("true", "1"):
        return 1
    if s in ("false", "0"):
        return 0
    raise ValueError(f"not a boolean label: {v!r}")


class KoBEST(MultipleChoiceTask):
    hf_name = ""  # subset folder in skt/kobest_v1
    orig_name = ""  # folder in the original release
    aggregations = {"f1": macro_f1}
    acc_norm = False  # lm-eval reports acc_norm for HellaSwag only

    def _files(self, data_dir: Path | None, splits: tuple[str, ...]) -> tuple[list[Path], bool]:
        base = locate(data_dir, ["kobest_v1", "kobest", "KoBEST"], f"kobest {self.hf_name}")
        for sub, hf in ((self.hf_name, True), (self.orig_name, False)):
            if (base / sub).is_dir():
                for split in splits:
                    files = find_split(base / sub, split)
                    if files:
                        self._found_split = split
                        return files, hf
        raise FileNotFoundError(f"{base}: no {self.hf_name}/ or {self.orig_name}/ with a {'/'.join(splits)} split")

    def _load(self, data_dir, splits) -> list[dict]:
        files, hf = self._files(data_dir, splits)
        convert = self.from_hf if hf else self.from_original
        return [it for f in files for it in convert_rows(read_rows(f, self.bad_rows), convert, self.bad_rows)]

    def load(self, data_dir: Path | None) -> list[dict]:
        items = self._load(data_dir, ("test", "validation"))
        self.split = self._found_split
        return items

    def few_shot_items(self, data_dir: Path | None) -> list[dict]:
        return self._load(data_dir, ("train",))

    def process(self, item: dict, results: list) -> dict[str, Any]:
        m = super().process(item, results)
        m["f1"] = (item["gold"], argmax([r[0] for r in results]))
        if not self.acc_norm:
            del m["acc_norm"], m["acc_bytes"]
        return m


@register_task("kobest_boolq")
class BoolQ(KoBEST):
    hf_name, orig_name = "boolq", "BoolQ"

    def from_hf(self, r):
        return {"paragraph": r["paragraph"], "question": r["question"], "gold": int(r["label"])}

    def from_original(self, r):
        return {"paragraph": r["Text"], "question": r["Question"], "gold": _bool(r["Answer"])}

    def text(self, item):
        return f"{item['paragraph']} 질문: {item['question']} 답변: "

    def choices(self, item):
        return ["아니오", "예"]


@register_task("kobest_copa")
class COPA(KoBEST):
    hf_name, orig_name = "copa", "COPA"

    def from_hf(self, r):
        return {"premise": r["premise"], "question": r["question"],
                "choices": [r["alternative_1"], r["alternative_2"]], "gold": int(r["label"])}

    def from_original(self, r):
        gold = int(r["Answer"]) - 1  # the original release counts from 1
        if gold not in (0, 1):
            raise ValueError(f"COPA Answer must be 1 or 2, got {r['Answer']!r}")
        return {"premise": r["sentence"], "question": r["question"], "choices": [r["1"], r["2"]], "gold": gold}

    def text(self, item):
        connector = {"원인": " 왜냐하면", "결과": " 그래서"}[item["question"].strip()]
        return f"{item['premise']} {connector}"  # lm-eval's double space, kept for parity


@register_task("kobest_hellaswag")
class HellaSwag(KoBEST):
    hf_name, orig_name = "hellaswag", "HellaSwag"
    acc_norm = True

    def from_hf(self, r):
        return {"context": r["context"], "choices": [r[f"ending_{i}"] for i in range(1, 5)], "gold": int(r["label"])}

    def from_original(self, r):
        return {"context": r["context"], "choices": [r[f"choice{i}"] for i in range(1, 5)], "gold": int(r["label"])}

    def text(self, item):
        return f"문장: {item['context']}"


@register_task("kobest_sentineg")
class SentiNeg(KoBEST):
    hf_name, orig_name = "sentineg", "SentiNeg"

    def from_hf(self, r):
        return {"sentence": r["sentence"], "gold": int(r["label"])}

    def from_original(self, r):
        return {"sentence": r["Text"], "gold": int(r["Label"])}

    def text(self, item):
        return f"문장: {item['sentence']} 긍부정:"

    def choices(self, item):
        return ["부정", "긍정"]


@register_task("kobest_wic")
class WiC(KoBEST):
    hf_name, orig_name = "wic", "WiC"

    def from_hf(self, r):
        return {"word": r["word"], "context_1": r["context_1"], "context_2": r["context_2"], "gold": int(r["label"])}

    def from_original(self, r):
        return {"word": r["Target"], "context_1": r["SENTENCE1"], "context_2": r["SENTENCE2"],
                "gold": _bool(r["ANSWER"])}

    def text(self, item):
        return f"문장1: {item['context_1']} 문장2: {item['context_2']} 두 문장에서 {item['word']}가 같은 뜻으로 쓰였나?"

    def choices(self, item):
        return ["아니오", "예"]
