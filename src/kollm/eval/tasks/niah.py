"""Needle-in-a-haystack as harness tasks `niah_en` and `niah_ko` (kollm.eval.niah builds the cases).

Options: `lengths`, `depths`, `max_length` (the model's context), `haystack` (a text file; default:
generated filler), `tokenizer` (a `tokenizer.json` or a directory holding one: lengths are then in
the model's tokens), `seed`. Per-item metrics: `acc` and `acc@LENGTH@DEPTH` (one cell of the heat
map; `kollm.eval.niah.cells_from_metrics` + `plot_heatmap` draw it from results.json).
No data directory is needed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kollm.eval.niah import NiahConfig, approx_tokens, build_cases, score
from kollm.eval.task import Request, Task, register_task


def token_counter(tokenizer: str | None):
    if not tokenizer:
        return approx_tokens
    from tokenizers import Tokenizer

    p = Path(tokenizer)
    tok = Tokenizer.from_file(str(p / "tokenizer.json" if p.is_dir() else p))
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


class NiahTask(Task):
    output_type = "generate"
    lang = "en"

    def __init__(self, tokenizer: str | None = None, **options: Any) -> None:
        super().__init__()
        self.cfg = NiahConfig(lang=self.lang, **options)  # unknown options: TypeError -> ValueError below
        self.count = token_counter(tokenizer)

    def load(self, data_dir: Path | None) -> list[dict]:
        return build_cases(self.cfg, self.count)

    def requests(self, item: dict, fewshot: Sequence[dict] = ()) -> list[Request]:
        return [Request("generate", (item["prompt"],), stop=("\n",), max_new_tokens=32)]

    def process(self, item: dict, results: list[Any]) -> dict[str, Any]:
        acc = score(results[0], item["value"])
        return {"acc": acc, f"acc@{item['length']}@{item['depth']:g}": acc}


def _make(lang: str):
    class _T(NiahTask):
        pass

    _T.lang = lang

    def factory(**options: Any) -> NiahTask:
        try:
            return _T(**options)
        except TypeError:  # NiahConfig(**options) with an unknown key
            known = sorted({f.name for f in dataclasses.fields(NiahConfig)} - {"lang"} | {"tokenizer"})
            unknown = sorted(set(options) - set(known))
            raise ValueError(f"niah_{lang}: unknown option(s) {unknown}; known: {', '.join(known)}") from None

    return factory


register_task("niah_en")(_make("en"))
register_task("niah_ko")(_make("ko"))
