"""The one reader of row files (JSONL, optionally .gz, and Parquet) for every stage: curation,
tokenising, SFT, DPO and preference pairs, GRPO prompts, distillation, the data judge, and the
evaluation tasks' JSONL files.

Every way a row can be malformed is one counted reason, the same everywhere, never an exception
that aborts the file: `bad_json`, `invalid_utf8` (raw bytes, or a lone surrogate escape in a
string), `nested_too_deep` (a `[[[[...]]]]` row past the recursion limit, which `json.loads`
reports as a RecursionError), `not_an_object` (a line that is `null`, a number, a list),
`unreadable_file` / `unreadable_parquet`; a stage's own check adds its reasons (`no_text`,
`unknown_role`, `chosen_equals_rejected`, ...). `RowErrors` counts them per reason and per file
with the first `file:line` of each, for the stage's summary line and its `bad_rows.json`.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)


class TooDeep(ValueError):
    """Nesting past the recursion limit."""


def loads_row(raw: str | bytes) -> Any:
    """`json.loads(raw)` (bytes are decoded as strict UTF-8), raising ValueError subclasses only."""
    text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    try:
        return json.loads(text)
    except RecursionError:
        raise TooDeep("JSON nested too deeply") from None


def has_surrogate(value: Any) -> bool:
    """Whether some string in `value` holds a lone surrogate (a "\\udc80" escape: not UTF-8 text)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return False
        except UnicodeEncodeError:
            return True
    if isinstance(value, dict):
        return any(has_surrogate(k) or has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_surrogate(v) for v in value)
    return False


def check_object(row: Any) -> tuple[dict | None, str | None]:
    """The default check: a row is a JSON object of valid text."""
    if not isinstance(row, dict):
        return None, "not_an_object"
    if has_surrogate(row):
        return None, "invalid_utf8"
    return row, None


Check = Callable[[Any], "tuple[dict | None, str | None]"]


def iter_rows(path: str | Path, check: Check = check_object,
              column: str | None = None) -> Iterator[tuple[int, dict | None, str | None]]:
    """Yield (line, row, None) for good rows and (line, None, reason) for malformed ones; blank
    lines are skipped. Lines are 1-based; for Parquet they are row numbers, 0 means the whole
    file. `check` (row → (row, None) or (None, reason)) may add a stage's own requirements; a
    Parquet file without `column` is one bad "row" 0."""
    path = str(path)
    if path.endswith(PARQUET_SUFFIXES):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as e:
            yield 0, None, f"unreadable_parquet: {e}"
            return
        if column is not None and column not in pf.schema_arrow.names:
            yield 0, None, f"no_{column}_column (columns: {pf.schema_arrow.names})"
            return
        line = 0
        for batch in pf.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                line += 1
                good, reason = check(row)
                yield line, good, reason
        return
    opener = gzip.open if path.endswith(".gz") else open
    line = 0
    try:
        with opener(path, "rb") as f:
            for line, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    row = loads_row(raw)
                except UnicodeDecodeError:
                    yield line, None, "invalid_utf8"
                    continue
                except TooDeep:
                    yield line, None, "nested_too_deep"
                    continue
                except json.JSONDecodeError:
                    yield line, None, "bad_json"
                    continue
                good, reason = check(row)
                yield line, good, reason
    except (OSError, EOFError) as e:  # a truncated or corrupt .gz: keep what was read, report the rest
        yield line + 1, None, f"unreadable_file: {e}"


class RowErrors:
    """Bad rows counted by reason (the part before any ':' detail) and per file, with the first
    few `file:line` of each reason for the user to look at."""

    def __init__(self, examples: int = 3):
        self.counts: Counter[str] = Counter()
        self.files: dict[str, Counter[str]] = {}
        self.where: dict[str, list[str]] = {}
        self.examples = examples

    def add(self, reason: str, path: str | Path, line: int) -> None:
        key = reason.split(":", 1)[0]
        self.counts[key] += 1
        self.files.setdefault(str(path), Counter())[key] += 1
        seen = self.where.setdefault(key, [])
        if len(seen) < self.examples:
            seen.append(f"{path}:{line}" + (f" ({reason})" if reason != key else ""))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "no bad rows"
        parts = [f"{n} {r} (e.g. {', '.join(self.where[r])})" for r, n in self.counts.most_common()]
        return f"{self.total} bad rows skipped: " + "; ".join(parts)

    def to_dict(self) -> dict:
        return {"total": self.total, "counts": dict(self.counts),
                "files": {f: dict(c) for f, c in sorted(self.files.items())}, "examples": self.where}


def count_jsonl_rows(path: str | None) -> int | None:
    """Rows of a JSONL file (non-blank lines); None when it is not there or not JSONL."""
    if not path or not Path(path).is_file() or not str(path).endswith((".jsonl", ".jsonl.gz")):
        return None
    with (gzip.open if str(path).endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


__all__ = ["JSONL_SUFFIXES", "PARQUET_SUFFIXES", "RowErrors", "TooDeep", "check_object", "count_jsonl_rows",
           "has_surrogate", "iter_rows", "loads_row"]
