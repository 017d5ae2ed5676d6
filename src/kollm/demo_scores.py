"""`kollm demo score WORKDIR`: what each post-training stage of the demo did, measured on held-out
items before and after it (kollm.demo_corpus holds them out of every stage's training data).

Every model (pretrained base, SFT, DPO, SLERP merge, GRPO) answers the three held-out tasks with
greedy chat replies to questions about a held-out subject, half of them after the fact itself:
SFT's (mostly lunch and favourite subject: the reply must be the answer exactly), DPO's (weather:
the reply must be the chosen answer exactly) and GRPO's (temperature: the math reward, 1 when the
reply's last number is the answer). With DPO's held-out
preference accuracy (its metrics.jsonl), GRPO's validation curve, the evaluation's results and the
chat prompt's reply, one table says per stage what it was for and what it did. Writes
OUT/effects.json (the report shows it) and OUT/effects.md (`kollm demo` prints it at the end).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CHAT_PROMPT = "민수는 점심으로 비빔밥을 먹었습니다. 민수는 점심으로 무엇을 먹었습니까?"
CHAT_ANSWER = "비빔밥을 먹었습니다."
MODELS = {"base": "pretrain/hf/latest", "SFT": "sft/hf/latest", "DPO": "dpo/hf/latest", "merged": "merge/model",
          "GRPO": "grpo/hf/latest"}


def _rows(path: Path, limit: int) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:limit] if line.strip()]


def greedy_replies(model_dir: Path, prompts: list[str], tokenizer, max_new_tokens: int = 40,
                   batch_size: int = 32) -> list[str]:
    """Greedy chat replies of the model (prompts rendered with `tokenizer`'s chat template)."""
    import torch

    from kollm.data.chat import encode_prompt, stop_token_ids
    from kollm.model.generate import GenerationConfig, generate
    from kollm.model.hf import load_hf

    model = load_hf(model_dir, dtype=torch.float32)
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, stop_token_ids=stop_token_ids(tokenizer))
    out = []
    for s in range(0, len(prompts), batch_size):
        ids = generate(model, [encode_prompt(tokenizer, p) for p in prompts[s:s + batch_size]], cfg)
        out += [tokenizer.decode(i, skip_special_tokens=True).strip() for i in ids]
    return out


def task_scores(model_dir: Path, tasks: dict[str, list[dict]], tokenizer) -> dict[str, float]:
    """Held-out score of one model on each task: the share of exact answers (sft, dpo) or the mean
    math reward (grpo)."""
    from kollm.rl.rewards import Rewards

    scores = {}
    for name, items in tasks.items():
        replies = greedy_replies(model_dir, [it["prompt"] for it in items], tokenizer)
        if name == "grpo":
            vals, _ = Rewards([{"name": "math"}])(replies, items)
        else:
            vals = [float(r == it["answer"]) for r, it in zip(replies, items)]
        scores[name] = sum(vals) / len(vals)
    return scores


def _metric_rows(path: Path, key: str) -> list[dict]:
    if not path.is_file():
        return []
    from kollm.report import read_metrics

    return [r for r in read_metrics(path) if isinstance(r.get(key), (int, float))]


def measure(workdir: Path, limit: int = 50) -> dict:
    """Every number of the table, from the demo's work directory."""
    from kollm.data.chat import load_tokenizer

    post = workdir / "posttrain"
    tasks = {
        "sft": [{"prompt": r["messages"][0]["content"], "answer": r["messages"][1]["content"]}
                for r in _rows(post / "chat" / "val.jsonl", limit)],
        "dpo": [{"prompt": r["prompt"][0]["content"], "answer": r["chosen"][0]["content"]}
                for r in _rows(post / "pairs" / "val.jsonl", limit)],
        "grpo": _rows(post / "math" / "val.jsonl", limit),
    }
    tokenizer = load_tokenizer(workdir / MODELS["SFT"])  # the chat template every stage trained with
    models = {}
    for name, rel in MODELS.items():
        if (workdir / rel).is_dir():
            models[name] = task_scores(workdir / rel, {"sft": tasks["sft"]} if name == "base" else tasks, tokenizer)
    dpo = _metric_rows(workdir / "dpo" / "metrics.jsonl", "val_reward_accuracy")
    grpo = _metric_rows(workdir / "grpo" / "metrics.jsonl", "val_reward_mean")
    results = json.loads((workdir / "eval" / "results.json").read_text()) if (workdir / "eval" / "results.json").is_file() else {}
    final = workdir / MODELS["GRPO"]
    chat = greedy_replies(final, [CHAT_PROMPT], tokenizer)[0] if final.is_dir() else None
    return {"n": {k: len(v) for k, v in tasks.items()}, "models": models,
            "dpo_preference_accuracy": dpo[-1]["val_reward_accuracy"] if dpo else None,
            "grpo_validation": [(r["step"], r["val_reward_mean"]) for r in grpo],
            # grpo.keep_best: which validation step the export is (kollm.train.grpo_data.BestExport)
            "grpo_export": json.loads(p.read_text()) if (p := workdir / "grpo" / "export.json").is_file() else None,
            "eval": results, "chat": {"prompt": CHAT_PROMPT, "reply": chat, "correct": chat == CHAT_ANSWER}}


def _f(v) -> str:
    return "–" if v is None or v != v else f"{v:.2f}"  # None / nan: not defined


def table(m: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows): per stage, the held-out measure, before, after, the goal."""
    s, n = m["models"], m["n"]
    get = lambda model, task: s.get(model, {}).get(task)  # noqa: E731
    rows = [["SFT", f"exact answer, greedy chat reply (lunch, subject; n={n['sft']})",
             f"base {_f(get('base', 'sft'))}", f"SFT {_f(get('SFT', 'sft'))}", "≈0 → ≥ 0.5"],
            ["DPO", "preference accuracy, implicit reward (weather)", "0.50 (policy = reference)",
             f"DPO {_f(m['dpo_preference_accuracy'])}", "≥ 0.8"],
            ["DPO", f"greedy reply = chosen answer (weather; n={n['dpo']})", f"SFT {_f(get('SFT', 'dpo'))}",
             f"DPO {_f(get('DPO', 'dpo'))}", "up"]]
    parents = "; ".join(f"{p} {_f(get(p, 'sft'))} / {_f(get(p, 'dpo'))} / {_f(get(p, 'grpo'))}" for p in ("SFT", "DPO"))
    rows.append(["merge", "SFT / DPO / GRPO task scores", parents,
                 f"merged {_f(get('merged', 'sft'))} / {_f(get('merged', 'dpo'))} / {_f(get('merged', 'grpo'))}",
                 "beside both parents"])
    val = m["grpo_validation"]
    best = max(val, key=lambda sv: sv[1]) if val else None
    curve = ", ".join(f"{step}: {v:.2f}" for step, v in val)
    rows.append(["GRPO", f"greedy math reward (temperature; n={n['grpo']}); validation by step: {curve or '–'}",
                 f"merged {_f(get('merged', 'grpo'))}",
                 f"GRPO {_f(get('GRPO', 'grpo'))}" + (f" (best validation {best[1]:.2f} at step {best[0]}, " + (
                     f"exported: step {ex['best_step']}, grpo.keep_best; last step {val[-1][1]:.2f})"
                     if (ex := m.get("grpo_export")) else f"final {val[-1][1]:.2f})") if best else ""),
                 "+0.2; final ≥ best − 0.05"])
    res = m["eval"].get("results", {})
    if res:
        acc = {t: next(iter(r.get("metrics", {}).values()), {}).get("value") for t, r in res.items()}
        cons = next(iter((m["eval"].get("consistency") or {}).values()), {})
        ce = [f"{k} {_f(v['value'])} ({v['count']}/{v['of']})" for k, v in cons.items() if isinstance(v, dict) and "value" in v]
        from kollm.demo_corpus import TEMPS

        rows.append(["eval", f"hrm8k_en / hrm8k_ko: the GRPO task in both languages (chance 1/{len(TEMPS)}: the "
                     "temperatures a city can have)", "–",
                     f"{_f(acc.get('hrm8k_en'))} / {_f(acc.get('hrm8k_ko'))}; " + "; ".join(ce), "above chance"])
    c = m["chat"]
    rows.append(["chat", f"“{c['prompt']}”", "–", f"“{c['reply']}” " + ("✓" if c["correct"] else "✗"), "correct"])
    return ["stage", "held-out measure", "before", "after", "goal"], rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kollm demo score", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdir", help="the demo's work directory")
    p.add_argument("--out", required=True, help="directory for effects.json and effects.md")
    p.add_argument("--limit", type=int, default=50, help="held-out items per task (default 50)")
    args = p.parse_args(argv)
    m = measure(Path(args.workdir), args.limit)
    header, rows = table(m)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "effects.json").write_text(json.dumps({**m, "table": {"header": header, "rows": rows}}, ensure_ascii=False,
                                                 indent=1), encoding="utf-8")
    (out / "effects.md").write_text(markdown(header, rows), encoding="utf-8")
    print(markdown(header, rows))
    return 0
