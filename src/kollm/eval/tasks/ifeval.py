"""IFEval (English, Zhou et al. 2023) and KoIFEval (Korean, the Trillion 7B report's 22
instruction types): generate a response to each prompt, check it with kollm.ifeval.

As lm-eval's `ifeval` task: 0-shot, the prompt as is, no stop sequence, up to 1280 new tokens,
greedy; metrics prompt_level_{strict,loose}_acc (mean over prompts) and inst_level_{strict,loose}_acc
(mean over all instructions). Requests ask chat back-ends to wrap the prompt as a user turn
(the reports score chat models). `strict_average` is the reports' number (mean of prompt- and
instruction-level strict accuracy). Data: `IFEval/` (HF `google/IFEval`: `ifeval_input_data.jsonl`
or its `train` split) and `ko_ifeval/` (any jsonl/parquet in the same row layout
`{"key", "prompt", "instruction_id_list", "kwargs"}`, or the public Korean IFEval layout
`{"id", "input", "ifeval": [{"id", "kwargs"}]}`; KoIFEval is in-house, bring your own). Korean rows
whose keyword kwargs stayed English are counted as `data_warnings` in results.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kollm.eval.task import Request, Task, register_task
from kollm.eval.tasks.common import EXTS, convert_rows, find_split, locate, read_rows
from kollm.ifeval.evaluate import english_keywords, inst_level_acc, score_row, validate_row


class IFEvalTask(Task):
    output_type = "generate"
    lang = "en"
    dirs: tuple[str, ...] = ()
    max_new_tokens = 1280
    aggregations = {"inst_level_strict_acc": inst_level_acc, "inst_level_loose_acc": inst_level_acc}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.bad_rows: list[str] = []
        self.data_warnings: list[str] = []  # rows that load but look wrong (English keywords in Korean rows)

    def load(self, data_dir: Path | None) -> list[dict]:
        base = locate(data_dir, self.dirs, self.name or "ifeval")
        files = [base] if base.is_file() else (find_split(base, "train") or find_split(base, "test")
                                               or sorted(p for e in EXTS for p in base.glob(f"*.{e}")))
        if not files:
            raise FileNotFoundError(f"{self.name}: no jsonl/json/parquet rows under {base}")
        rows = [r for f in files for r in read_rows(f, self.bad_rows)]
        items = convert_rows(rows, lambda r: validate_row(r, self.lang), self.bad_rows)
        if self.lang == "ko":
            self.data_warnings = [f"{it['_where']}: {w}" for it in items for w in english_keywords(it)]
        return items

    def requests(self, item: dict, fewshot: Sequence[dict] = ()) -> list[Request]:
        return [Request("generate", (item["prompt"],), stop=(), max_new_tokens=self.max_new_tokens, chat=True)]

    def process(self, item: dict, results: list[Any]) -> dict[str, Any]:
        s = score_row(item, results[0], self.lang)
        return {k: (v if isinstance(v, list) else float(v)) for k, v in s.items()}

    def aggregate(self, per_item, bootstrap_iters=1000, seed=1234):
        out = super().aggregate(per_item, bootstrap_iters, seed)
        if "prompt_level_strict_acc" in out:
            v = (out["prompt_level_strict_acc"]["value"] + out["inst_level_strict_acc"]["value"]) / 2
            out["strict_average"] = {"value": v, "stderr": float("nan"), "n": len(per_item)}
        return out


@register_task("ifeval")
class IFEval(IFEvalTask):
    lang = "en"
    dirs = ("IFEval", "ifeval", "google/IFEval")


@register_task("ko_ifeval")
class KoIFEval(IFEvalTask):
    lang = "ko"
    dirs = ("ko_ifeval", "KoIFEval", "ko-ifeval")
