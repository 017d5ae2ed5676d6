"""Cross-lingual consistency on parallel items (Trillion 7B report §7.1, Table 8).

For a source language s and a target language t answering the same questions:
  P(t✓ | s✓)  — knowledge that transfers: E(T)→K(T) in the report (higher is better);
  P(s✓ | t✗)  — the report's K(F)→E(T): items the model knows in s yet misses in t (lower is better);
  P(t✓ | s✗)  — E(F)→K(T): right in t although wrong in s (lower is better: consistent errors).
Items are paired by the task's parallel key (e.g. Global-MMLU `sample_id`, HRM8K `pair_id`) and
any pair of languages and any parallel task works; counts are reported with every ratio.
"""

from __future__ import annotations

from collections.abc import Sequence


def _correct(records: Sequence[dict], metric: str) -> dict:
    out = {}
    for r in records:
        key = r.get("pair_id", r["index"])
        if r.get("failed"):  # not scored (counted in the task's failed_items): the pair is left unpaired
            continue
        if metric not in r["metrics"]:
            raise KeyError(f"item {key}: no metric {metric!r} (has {sorted(r['metrics'])})")
        out[key] = r["metrics"][metric] >= 0.5
    return out


def _ratio(num: int, den: int) -> dict:
    return {"value": num / den if den else float("nan"), "count": num, "of": den}


def consistency(source: Sequence[dict], target: Sequence[dict], metric: str = "acc",
                source_lang: str = "en", target_lang: str = "ko") -> dict:
    """Per-item records of the same parallel task in two languages (results.json `samples`)."""
    s, t = _correct(source, metric), _correct(target, metric)
    keys = [k for k in s if k in t]
    if not keys:
        raise ValueError("no parallel items: the two record sets share no pair ids")
    s_ok = [k for k in keys if s[k]]
    s_bad = [k for k in keys if not s[k]]
    t_bad = [k for k in keys if not t[k]]
    a, b = source_lang, target_lang
    return {
        "pairs": len(keys),
        f"P({b}✓|{a}✓)": _ratio(sum(t[k] for k in s_ok), len(s_ok)),
        f"P({a}✓|{b}✗)": _ratio(sum(s[k] for k in t_bad), len(t_bad)),
        f"P({b}✓|{a}✗)": _ratio(sum(t[k] for k in s_bad), len(s_bad)),
        "unpaired": {a: len(s) - len(keys), b: len(t) - len(keys)},
    }


def lang_of(task_name: str) -> str:
    """`global_mmlu_ko` → `ko`."""
    return task_name.rsplit("_", 1)[-1]
