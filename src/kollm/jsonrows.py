"""One JSON row of a dataset file, parsed so that every way it can be malformed is a ValueError
the caller counts as one bad row: bad JSON (JSONDecodeError), invalid UTF-8 (UnicodeDecodeError)
and nesting deeper than the interpreter's recursion limit, which `json.loads` reports as a
RecursionError -- one `[[[[...]]]]` row of 100,000 levels used to abort `data curate`, `data
tokenize` and `eval` with a traceback."""

from __future__ import annotations

import json
from typing import Any


class TooDeep(ValueError):
    """Nesting past the recursion limit."""


def loads_row(raw: str | bytes) -> Any:
    """`json.loads(raw)` (bytes are decoded as strict UTF-8), raising ValueError subclasses only."""
    text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    try:
        return json.loads(text)
    except RecursionError:
        raise TooDeep("JSON nested too deeply") from None
