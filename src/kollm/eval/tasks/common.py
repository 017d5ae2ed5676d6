"""Shared pieces of the built-in tasks: reading a benchmark's files in either of its layouts
(the Hugging Face dataset repo as `snapshot_download` leaves it, or the original release), and
the two task shapes lm-evaluation-harness uses most — multiple choice by log-likelihood and
generate-then-extract.

Layouts: `data_dir/<dir>/...` where <dir> is the Hugging Face repo name (e.g. `kobest_v1`,
`mmlu`, `gsm8k`) or the original release's folder. A split is found as `<split>.{jsonl,json,
parquet,csv,tsv}`, `<split>-*.parquet` (HF's converted shards), or `<split>/*.parquet`;
`validation` and `dev` are the same split. A malformed row is counted (with file and line)
in `task.bad_rows` and skipped; the harness reports the count.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from kollm.eval.task import Request, Task, mc_metrics
from kollm.jsonrows import iter_rows

SPLIT_ALIASES = {"validation": ("validation", "dev", "val"), "dev": ("dev", "validation", "val"),
                 "test": ("test",), "train": ("train",)}
EXTS = ("jsonl", "json", "parquet", "csv", "tsv")
_SURROGATE = re.compile("[\udc80-\udcff]")


def find_split(base: Path, split: str, stem_prefix: str = "") -> list[Path]:
    """Files holding `split` under `base` (non-recursive patterns, HF and original names)."""
    found: list[Path] = []
    for s in SPLIT_ALIASES.get(split, (split,)):
        for pat in [f"{stem_prefix}{s}.{e}" for e in EXTS] + [f"{stem_prefix}{s}-*.parquet", f"{s}/*.parquet",
                                                             f"data/{s}-*.parquet", f"{stem_prefix}{s}.jsonl.gz"]:
            found += sorted(p for p in base.glob(pat) if p.is_file())
        if found:
            return found
    return found


def read_rows(path: Path, bad: list[str] | None = None, header: Sequence[str] | None = None) -> list[tuple[str, dict]]:
    """Rows of a jsonl/json/parquet/csv/tsv file as (where, row) pairs; `where` is `file:line`.
    `header` names the columns of a header-less CSV (MMLU's original files)."""
    path = Path(path)
    suffix = path.suffix.lower()
    out: list[tuple[str, dict]] = []
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            out.append((f"{path}:row {i}", row))
    elif suffix == ".jsonl" or path.name.endswith(".jsonl.gz"):
        for n, row, reason in iter_rows(path):  # the one reader: the same counted reasons as training's
            if row is None:
                _bad(bad, f"{path}:{n}: {reason}")
            else:
                out.append((f"{path}:{n}", row))
    elif suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):  # BBH's original files: {"examples": [...]}
            data = data.get("examples", data.get("data", [data]))
        out = [(f"{path}:item {i}", r) for i, r in enumerate(data)]
    elif suffix in (".csv", ".tsv"):
        # surrogateescape: an invalid UTF-8 byte becomes a lone surrogate, found per row below
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            reader = csv.reader(f, delimiter="\t" if suffix == ".tsv" else ",",
                                quoting=csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL)
            rows = list(reader)
        cols = list(header) if header else rows[0]
        # a header-less format may still come with a header row (the shared MMLU copy does)
        skip = 1 if not header or (rows and [c.strip() for c in rows[0]] == list(header)) else 0
        for n, r in enumerate(rows[skip:], skip + 1):
            if len(r) != len(cols):
                _bad(bad, f"{path}:{n}: {len(r)} fields, expected {len(cols)}")
                continue
            if any(_SURROGATE.search(c) for c in r):
                _bad(bad, f"{path}:{n}: invalid UTF-8")
                continue
            out.append((f"{path}:{n}", dict(zip(cols, r))))
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r} (jsonl, json, parquet, csv, tsv)")
    return out


def _bad(bad: list[str] | None, msg: str) -> None:
    if bad is not None:
        bad.append(msg)


def convert_rows(rows: Iterable[tuple[str, dict]], convert: Callable[[dict], dict | None],
                 bad: list[str]) -> list[dict]:
    """Apply `convert` to each row; a row it rejects (KeyError/ValueError/TypeError/IndexError)
    is recorded in `bad` with its file and line. `convert` may return None to skip a row."""
    items = []
    for where, row in rows:
        try:
            item = convert(row)
        except (KeyError, ValueError, TypeError, IndexError) as e:
            bad.append(f"{where}: {type(e).__name__}: {e}")
            continue
        if item is not None:
            item.setdefault("_where", where)
            items.append(item)
    return items


def locate(data_dir: Path | None, names: Sequence[str], what: str) -> Path:
    """The first existing `data_dir/name` among `names` (HF repo name first, original second)."""
    if data_dir is None:
        raise FileNotFoundError(f"{what}: no --data-dir given (looked for {', '.join(names)})")
    for n in names:
        p = Path(data_dir) / n
        if p.exists():
            return p
    raise FileNotFoundError(f"{what}: none of {', '.join(str(Path(data_dir) / n) for n in names)} exists")


class MultipleChoiceTask(Task):
    """lm-eval's multiple_choice: context = description + shots + `text(item)`; each choice is
    scored as " " + choice (target_delimiter); shots are `text + " " + gold choice` joined by
    blank lines (fewshot_delimiter "\\n\\n")."""

    output_type = "multiple_choice"
    target_delimiter = " "
    fewshot_delimiter = "\n\n"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.bad_rows: list[str] = []

    def text(self, item: dict) -> str:
        return item["query"]

    def choices(self, item: dict) -> list[str]:
        return item["choices"]

    def description(self, item: dict) -> str:
        return ""

    def shot(self, item: dict) -> str:
        return self.text(item) + self.target_delimiter + self.choices(item)[item["gold"]]

    def context(self, item: dict, fewshot: Sequence[dict] = ()) -> str:
        shots = "".join(self.shot(s) + self.fewshot_delimiter for s in fewshot)
        return self.description(item) + shots + self.text(item)

    def requests(self, item: dict, fewshot: Sequence[dict] = ()) -> list[Request]:
        n, gold = len(self.choices(item)), item["gold"]
        if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < n:
            raise ValueError(f"label {gold!r} is not one of the {n} choices")  # a bad row (the harness counts it)
        ctx = self.context(item, fewshot)
        return [Request("loglikelihood", (ctx, self.target_delimiter + c)) for c in self.choices(item)]

    def process(self, item: dict, results: list) -> dict[str, Any]:
        return mc_metrics(results, self.choices(item), item["gold"])


def macro_f1(pairs: list) -> float:
    """Macro F1 over (gold, pred) pairs, as lm-eval's KoBEST `f1` (sklearn average='macro')."""
    labels = sorted({g for g, _ in pairs} | {p for _, p in pairs})
    f1s = []
    for c in labels:
        tp = sum(1 for g, p in pairs if g == c and p == c)
        fp = sum(1 for g, p in pairs if g != c and p == c)
        fn = sum(1 for g, p in pairs if g == c and p != c)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(f1s) / len(f1s) if f1s else float("nan")


class GenerateTask(Task):
    """lm-eval's generate_until: greedy generation until a stop sequence, answer extraction,
    exact match against the gold answer."""

    output_type = "generate"
    stop: tuple[str, ...] = ("\n\n",)
    max_new_tokens = 256
    fewshot_delimiter = "\n\n"
    chat = False

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.bad_rows: list[str] = []

    def text(self, item: dict) -> str:
        raise NotImplementedError

    def target(self, item: dict) -> str:
        """The text a shot shows after its prompt (usually the worked solution)."""
        raise NotImplementedError

    def shot(self, item: dict) -> str:
        return self.text(item) + " " + self.target(item)

    def context(self, item: dict, fewshot: Sequence[dict] = ()) -> str:
        return "".join(self.shot(s) + self.fewshot_delimiter for s in fewshot) + self.text(item)

    def requests(self, item: dict, fewshot: Sequence[dict] = ()) -> list[Request]:
        return [Request("generate", (self.context(item, fewshot),), stop=self.stop,
                        max_new_tokens=self.max_new_tokens, chat=self.chat)]
