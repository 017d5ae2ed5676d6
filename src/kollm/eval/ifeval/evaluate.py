"""IFEval scoring: prompt-level and instruction-level accuracy, strict and loose, as
google-research IFEval `evaluation_lib` and lm-eval's `ifeval` task compute them.

Strict checks the response as is. Loose passes an instruction if any of eight variants passes:
the response, without its first line, without its last line, without both, and each of those
with every `*` removed (markdown emphasis is forgiven). Prompt-level: all instructions of a row
pass; instruction-level: the mean over all instructions of all rows (a micro average). The
Trillion report's KoIFEval number is the mean of prompt- and instruction-level strict accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence

from kollm.eval.ifeval.registry import clean_kwargs, follows


def loose_variants(response: str) -> list[str]:
    lines = response.split("\n")
    cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [response, response.replace("*", ""), *cut, *(c.replace("*", "") for c in cut)]


def validate_row(row: dict, lang: str) -> dict:
    """A `{"key", "prompt", "instruction_id_list", "kwargs"}` row, checked: ids known, one kwargs
    dict per id, kwargs valid. Raises ValueError/KeyError naming the problem."""
    for k in ("prompt", "instruction_id_list", "kwargs"):
        if k not in row:
            raise KeyError(f"missing field {k!r}")
    ids, kwargs = list(row["instruction_id_list"]), list(row["kwargs"])
    if len(ids) != len(kwargs):
        raise ValueError(f"{len(ids)} instruction ids but {len(kwargs)} kwargs dicts")
    for i, kw in zip(ids, kwargs):
        clean_kwargs(lang, i, kw)
    return {"key": row.get("key"), "prompt": row["prompt"], "instruction_id_list": ids, "kwargs": kwargs}


def score_row(row: dict, response: str, lang: str = "en") -> dict[str, list[bool] | bool]:
    """Per-instruction strict and loose verdicts of one response, and the prompt-level ones."""
    strict, loose = [], []
    variants = loose_variants(response)
    for iid, kw in zip(row["instruction_id_list"], row["kwargs"]):
        kw = clean_kwargs(lang, iid, kw)
        strict.append(follows(lang, iid, response, kw))
        loose.append(strict[-1] or any(follows(lang, iid, v, kw) for v in variants[1:]))
    return {"prompt_level_strict_acc": all(strict), "inst_level_strict_acc": strict,
            "prompt_level_loose_acc": all(loose), "inst_level_loose_acc": loose}


def inst_level_acc(items: Sequence[Sequence[bool]]) -> float:
    flat = [x for item in items for x in item]
    return sum(flat) / len(flat) if flat else float("nan")


def aggregate(scored: Sequence[dict]) -> dict[str, float]:
    """Mean prompt-level and micro instruction-level accuracies, plus `strict_average` (the mean of
    prompt- and instruction-level strict accuracy, the Trillion report's (Ko)IFEval score)."""
    n = len(scored)
    out = {k: sum(s[k] for s in scored) / n if n else float("nan")
           for k in ("prompt_level_strict_acc", "prompt_level_loose_acc")}
    for k in ("inst_level_strict_acc", "inst_level_loose_acc"):
        out[k] = inst_level_acc([s[k] for s in scored])
    out["strict_average"] = (out["prompt_level_strict_acc"] + out["inst_level_strict_acc"]) / 2
    return out
