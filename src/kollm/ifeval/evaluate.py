"""IFEval scoring: prompt-level and instruction-level accuracy, strict and loose, as
google-research IFEval `evaluation_lib` and lm-eval's `ifeval` task compute them.

Strict checks the response as is. Loose passes an instruction if any of eight variants passes:
the response, without its first line, without its last line, without both, and each of those
with every `*` removed (markdown emphasis is forgiven). Prompt-level: all instructions of a row
pass; instruction-level: the mean over all instructions of all rows (a micro average). The
Trillion report's KoIFEval number is the mean of prompt- and instruction-level strict accuracy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from kollm.ifeval.instructions_ko import options_from_prompt
from kollm.ifeval.registry import clean_kwargs, follows


def loose_variants(response: str) -> list[str]:
    lines = response.split("\n")
    cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [response, response.replace("*", ""), *cut, *(c.replace("*", "") for c in cut)]


def normalize_row(row: dict) -> dict:
    """lm-eval / google IFEval rows `{key, prompt, instruction_id_list, kwargs}` as they are; the
    public Korean IFEval rows `{id, input, ifeval: [{id, kwargs}]}` rewritten to that layout."""
    if "prompt" not in row and "input" in row and "ifeval" in row:
        insts = row["ifeval"]
        if not isinstance(insts, list) or not all(isinstance(x, dict) and "id" in x for x in insts):
            raise ValueError("'ifeval' must be a list of {id, kwargs} objects")
        return {"key": row.get("id", row.get("key")), "prompt": row["input"],
                "instruction_id_list": [x["id"] for x in insts], "kwargs": [x.get("kwargs") or {} for x in insts]}
    return row


def validate_row(row: dict, lang: str) -> dict:
    """A row in either layout (`normalize_row`), checked: ids known, one kwargs dict per id, kwargs
    valid. Raises ValueError/KeyError naming the problem. Korean constrained-response
    instructions without options take them from the prompt (`options_from_prompt`)."""
    row = normalize_row(row)
    for k in ("prompt", "instruction_id_list", "kwargs"):
        if k not in row:
            raise KeyError(f"missing field {k!r} (IFEval rows: key, prompt, instruction_id_list, kwargs; "
                           "or id, input, ifeval)")
    ids, kwargs = list(row["instruction_id_list"]), [dict(kw or {}) for kw in row["kwargs"]]
    if len(ids) != len(kwargs):
        raise ValueError(f"{len(ids)} instruction ids but {len(kwargs)} kwargs dicts")
    for i, kw in zip(ids, kwargs):
        if lang == "ko" and i == "detectable_format:constrained_response" and not clean_kwargs(lang, i, kw):
            if opts := options_from_prompt(str(row["prompt"])):
                kw["options"] = opts
        clean_kwargs(lang, i, kw)
    return {"key": row.get("key"), "prompt": row["prompt"], "instruction_id_list": ids, "kwargs": kwargs}


_KEYWORD_KWARGS = ("keywords", "keyword", "forbidden_words", "letter", "first_word", "end_phrase")
_HANGUL = re.compile(r"[\uac00-\ud7a3]")


def english_keywords(row: dict) -> list[str]:
    """Keyword kwargs a Korean prompt's row leaves in English (a translation that missed them):
    Latin-only values the prompt itself never mentions. Each is a data warning, not an error --
    the checker still runs, the item most likely cannot be passed."""
    prompt = str(row["prompt"])
    if not _HANGUL.search(prompt):
        return []
    out = []
    for iid, kw in zip(row["instruction_id_list"], row["kwargs"]):
        for k in _KEYWORD_KWARGS:
            vals = kw.get(k)
            for v in vals if isinstance(vals, list) else [vals]:
                if isinstance(v, str) and re.search(r"[A-Za-z]", v) and not _HANGUL.search(v) \
                        and v.lower() not in prompt.lower():
                    out.append(f"{iid} {k}={v!r} is English but the prompt is Korean and never says it")
    return out


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
