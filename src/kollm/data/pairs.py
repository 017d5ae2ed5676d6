"""`kollm dpo pairs --prompts P --responses R... --out PAIRS`: preference pairs from several scored
responses per prompt — the policy's own samples and other models' answers (Trillion 7B's mix of
on- and off-policy responses, DNA 1.0's reward-ranked samples).

Per prompt: chosen = the best-scored response, rejected = the worst (the first one in file order
among equals). Dropped, and counted by reason: prompts with fewer than two scored responses,
ties (best score = worst score), and pairs whose lengths (characters) differ by more than
`max_length_ratio` (Trillion's length filter: the model should not learn that longer wins).

Scores, in order of precedence: a `score` already in the response row; a reward function given
as a dotted path `package.module:function` called as `f(prompt, response, row) -> float`; the
built-in `math` verifier (1 when the response's final number equals the prompt row's `answer`,
else 0); a scalar reward model (kollm.data.reward_model: a *ForSequenceClassification checkpoint
in process, or a /classify endpoint); or an LLM judge behind any OpenAI-compatible endpoint
(FastChat's single-answer 1–10 rating, kollm.eval.judge, or `--judge-rubric dna`: relevance,
helpfulness and safety, DNA 1.0 §4.4's criteria; through kollm.openai_client). Responses a
judge or an endpoint could not score are counted by reason and by prompt in the report.

Files: prompts rows `{id, prompt (string or messages), answer?}`; response rows
`{id, response | responses: [...], score?}` (`id` names the prompt). Output rows are TRL preference
rows `{id, prompt, chosen, rejected, chosen_score, rejected_score}`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kollm.data.chat import iter_rows, prompt_text
from kollm.data.reward_model import Failures, reward_model_scorer
from kollm.judging import FASTCHAT, judge_turn, parse_fastchat
from kollm.openai_client import ChatClient, ClientConfig

Scorer = Callable[[object, str, dict], "float | None"]


# -- scorers ------------------------------------------------------------------------------------------
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> float | None:
    """The last `\\boxed{...}` number, else the last number in the text (thousands commas dropped)."""
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", text)
    for cand in ([boxed[-1]] if boxed else []) + [text]:
        nums = _NUMBER.findall(cand)
        if nums:
            try:
                return float(nums[-1].replace(",", ""))
            except ValueError:
                return None
    return None


def math_verifier(prompt, response: str, row: dict) -> float | None:
    """1.0 when the final number of `response` equals the row's `answer` (to 1e-6), else 0.0."""
    gold = final_number(str(row.get("answer", "")))
    if gold is None:
        return None
    got = final_number(response)
    return float(got is not None and abs(got - gold) <= 1e-6 * max(1.0, abs(gold)))


VERIFIERS: dict[str, Scorer] = {"math": math_verifier}


def load_reward(path: str) -> Scorer:
    """`package.module:function` (or `package.module.function`) → the function."""
    mod, sep, fn = path.partition(":")
    if not sep:
        mod, _, fn = path.rpartition(".")
    try:
        f = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError, ValueError) as e:
        raise ValueError(f"reward function {path!r}: cannot import ({e})") from None
    if not callable(f):
        raise ValueError(f"reward function {path!r} is not callable")
    return f


# kollm's rubric for DNA 1.0 §4.4's three criteria (the report gives no prompt).
RUBRIC_SYSTEM = (
    "You are a strict evaluator of an AI assistant's answer to a user. Rate the answer on three criteria, "
    "each an integer from 1 to 10: relevance (does it address what the user asked), helpfulness (is it "
    "correct, complete and useful), safety (is it free of harmful, unethical, dangerous or illegal content; "
    "10 = entirely safe). Explain briefly, then end with exactly this line: "
    "[[relevance: R]] [[helpfulness: H]] [[safety: S]]")
RUBRIC_USER = ("[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n"
               "[The End of Assistant's Answer]")
RUBRIC_KEYS = ("relevance", "helpfulness", "safety")


def parse_rubric(judgment: str) -> float | None:
    """The mean of the three 1–10 ratings; None unless all three are there and in range."""
    vals = []
    for key in RUBRIC_KEYS:
        m = re.findall(rf"\[\[\s*{key}\s*:\s*(\d+(?:\.\d+)?)\s*\]\]", judgment, flags=re.IGNORECASE)
        if not m or not 1 <= float(m[-1]) <= 10:
            return None
        vals.append(float(m[-1]))
    return sum(vals) / len(vals)


def judge_scorer(endpoint: str, model: str, api_key: str | None = None, concurrency: int = 8,
                 retries: int = 2, rubric: str = "fastchat") -> Scorer:
    """An OpenAI-compatible judge: FastChat single-answer grading (1–10, `[[rating]]`), or
    `rubric: dna` — relevance, helpfulness and safety, 1–10 each, averaged. A judgment with no
    parsable score (after `retries` more asks) or a failed call leaves the response unscored and
    is counted by prompt in `score.failures`."""
    if rubric not in ("fastchat", "dna"):
        raise ValueError(f"judge rubric {rubric!r}: fastchat or dna")
    client = ChatClient(ClientConfig(endpoint=endpoint, model=model, api_key=api_key, concurrency=concurrency,
                                     max_retries=3, backoff_s=0.5))
    system, template = FASTCHAT["single"] if rubric == "fastchat" else (RUBRIC_SYSTEM, RUBRIC_USER)
    parse = parse_fastchat if rubric == "fastchat" else parse_rubric
    failures = Failures()

    def score(prompt, response: str, row: dict) -> float | None:
        msgs = [{"role": "system", "content": system},
                {"role": "user", "content": template.format(question=prompt_text(prompt), answer=response)}]
        value, _, error = judge_turn(client, msgs, parse, retries)
        if value is None:
            failures.add("judge_error" if error else "unparsable", prompt, row)
        return value

    score.concurrency = concurrency
    score.failures = failures
    return score


def make_scorer(reward: str | None = None, verifier: str | None = None, judge: dict | None = None,
                reward_model: dict | None = None) -> Scorer | None:
    given = [x for x in (reward, verifier, judge and judge.get("endpoint"), reward_model) if x]
    if len(given) > 1:
        raise ValueError("give one of a reward function, a verifier, a judge endpoint or a reward model")
    if reward:
        return load_reward(reward)
    if verifier:
        if verifier not in VERIFIERS:
            raise ValueError(f"verifier {verifier!r}: one of {', '.join(VERIFIERS)}")
        return VERIFIERS[verifier]
    if reward_model:
        return reward_model_scorer(reward_model)
    if judge and judge.get("endpoint"):
        import os

        unknown = set(judge) - {"endpoint", "model", "api_key_env", "concurrency", "rubric"}
        if unknown:
            raise KeyError(f"judge.{sorted(unknown)[0]}: unknown key (known: endpoint, model, api_key_env, "
                           "concurrency, rubric)")
        key = os.environ.get(judge["api_key_env"]) if judge.get("api_key_env") else None
        return judge_scorer(judge["endpoint"], judge.get("model", "judge"), key, int(judge.get("concurrency", 8)),
                            rubric=judge.get("rubric", "fastchat"))
    return None


def score_all(items: Sequence[tuple[object, str, dict]], scorer: Scorer) -> list[float | None]:
    """Scores of (prompt, response, row) triples; a judge is asked concurrently, a reward model
    batched (its `score_batch`)."""
    if hasattr(scorer, "score_batch"):
        return scorer.score_batch(list(items))
    workers = getattr(scorer, "concurrency", 1)

    def one(item):
        s = scorer(*item)
        return None if s is None else float(s)

    if workers <= 1:
        return [one(it) for it in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, items))


# -- pair selection -------------------------------------------------------------------------------------
def choose_pairs(prompts: dict[str, dict], responses: dict[str, list[dict]],
                 max_length_ratio: float | None = None) -> tuple[list[dict], Counter]:
    """Best vs worst per prompt from scored responses (`{response, score}`); counts per reason."""
    counts: Counter = Counter()
    pairs = []
    for pid, row in prompts.items():
        cands = [r for r in responses.get(pid, []) if r.get("score") is not None]
        counts["unscored"] += len(responses.get(pid, [])) - len(cands)
        if len(cands) < 2:
            counts["fewer_than_two_scored"] += 1
            continue
        best = max(cands, key=lambda r: r["score"])  # max/min keep the first of equals
        worst = min(cands, key=lambda r: r["score"])
        if best["score"] == worst["score"]:
            counts["tie"] += 1
            continue
        if best["response"] == worst["response"]:  # a sampler or judge disagreeing with itself: no signal
            counts["same_response"] += 1
            continue
        a, b = len(best["response"]), len(worst["response"])
        if max_length_ratio is not None and max(a, b) > max_length_ratio * max(1, min(a, b)):
            counts["length_ratio"] += 1
            continue
        prompt = row["prompt"]
        chosen, rejected = best["response"], worst["response"]
        if not isinstance(prompt, str):  # conversational prompt: the completions are assistant turns
            chosen, rejected = ([{"role": "assistant", "content": t}] for t in (chosen, rejected))
        pairs.append({"id": pid, "prompt": prompt, "chosen": chosen, "rejected": rejected, "chosen_score": best["score"],
                      "rejected_score": worst["score"]})
        counts["kept"] += 1
    return pairs, counts


def read_prompts(path: str) -> tuple[dict[str, dict], Counter]:
    prompts, bad = {}, Counter()
    for line, row, reason in iter_rows(path):
        if reason is None and (not isinstance(row.get("prompt"), (str, list)) or not row.get("prompt")):
            reason = "missing_prompt"
        if reason is not None:
            bad[reason] += 1
            print(f"kollm dpo pairs: {path}:{line}: {reason}", file=sys.stderr)
            continue
        prompts[str(row.get("id", line))] = row
    return prompts, bad


def read_responses(paths: Sequence[str], prompts: dict[str, dict]) -> tuple[dict[str, list[dict]], Counter]:
    out: dict[str, list[dict]] = {}
    bad: Counter = Counter()
    for path in paths:
        for line, row, reason in iter_rows(path):
            if reason is None:
                texts = row.get("responses", [row.get("response")])
                if "id" not in row or str(row["id"]) not in prompts:
                    reason = "unknown_prompt_id"
                elif not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                    reason = "missing_response"
            if reason is not None:
                bad[reason] += 1
                print(f"kollm dpo pairs: {path}:{line}: {reason}", file=sys.stderr)
                continue
            score = row.get("score")
            scores = score if isinstance(score, list) else [score] * len(texts)
            for t, s in zip(texts, scores):
                out.setdefault(str(row["id"]), []).append({"response": t, "score": s, "where": f"{path}:{line}"})
    return out, bad


def build_pairs(prompts: dict[str, dict], responses: dict[str, list[dict]], scorer: Scorer | None,
                max_length_ratio: float | None = None) -> tuple[list[dict], Counter]:
    """Score what has no score yet, then choose best vs worst per prompt."""
    todo = [(pid, r) for pid, rs in responses.items() for r in rs if r.get("score") is None]
    if todo and scorer is not None:
        scores = score_all([(prompts[pid]["prompt"], r["response"], prompts[pid]) for pid, r in todo], scorer)
        for (_, r), s in zip(todo, scores):
            r["score"] = s
    return choose_pairs(prompts, responses, max_length_ratio)


def write_jsonl(path: str | Path, rows: Sequence[dict]) -> None:
    """Atomic: a temp file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kollm dpo pairs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", required=True, help="prompt rows {id, prompt, answer?} (JSONL/Parquet)")
    p.add_argument("--responses", required=True, nargs="+", help="response rows {id, response|responses, score?}")
    p.add_argument("--out", required=True, help="output preference file (JSONL)")
    p.add_argument("--reward", default=None, help="reward function, dotted path pkg.module:function")
    p.add_argument("--verifier", default=None, choices=sorted(VERIFIERS), help="built-in verifier")
    p.add_argument("--judge-endpoint", default=None, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--judge-model", default="judge")
    p.add_argument("--judge-api-key-env", default=None, help="environment variable holding the judge's API key")
    p.add_argument("--judge-concurrency", type=int, default=8)
    p.add_argument("--judge-rubric", default="fastchat", choices=["fastchat", "dna"],
                   help="fastchat: one 1–10 rating; dna: relevance, helpfulness, safety 1–10 each, averaged")
    p.add_argument("--reward-model", default=None,
                   help="a scalar reward model: a *ForSequenceClassification checkpoint directory (in process) "
                        "or an http(s) /classify endpoint (vLLM, SGLang)")
    p.add_argument("--reward-model-name", default="default", help="endpoint: the model name sent")
    p.add_argument("--reward-model-tokenizer", default=None,
                   help="endpoint: the reward model's tokenizer directory (its chat template renders the text)")
    p.add_argument("--reward-model-batch", type=int, default=8, help="responses per reward-model batch")
    p.add_argument("--max-length-ratio", type=float, default=None,
                   help="drop pairs whose longer response exceeds this many times the shorter (characters)")
    args = p.parse_args(argv)
    judge = {"endpoint": args.judge_endpoint, "model": args.judge_model, "api_key_env": args.judge_api_key_env,
             "concurrency": args.judge_concurrency, "rubric": args.judge_rubric} if args.judge_endpoint else None
    rm = None
    if args.reward_model:
        rm = ({"endpoint": args.reward_model, "model": args.reward_model_name,
               "tokenizer": args.reward_model_tokenizer} if args.reward_model.startswith(("http://", "https://"))
              else {"path": args.reward_model})
        rm["batch_size"] = args.reward_model_batch
    scorer = make_scorer(args.reward, args.verifier, judge, rm)
    for f in [args.prompts, *args.responses]:
        if not Path(f).exists():
            raise FileNotFoundError(f"{f}: no such file")
    prompts, bad_p = read_prompts(args.prompts)
    responses, bad_r = read_responses(args.responses, prompts)
    if scorer is None and any(r.get("score") is None for rs in responses.values() for r in rs):
        raise ValueError("some responses have no score: give --reward, --verifier or --judge-endpoint")
    pairs, counts = build_pairs(prompts, responses, scorer, args.max_length_ratio)
    write_jsonl(args.out, pairs)
    report = {"prompts": len(prompts), "responses": sum(map(len, responses.values())), **counts,
              **{f"bad_prompt_rows_{k}": v for k, v in bad_p.items()},
              **{f"bad_response_rows_{k}": v for k, v in bad_r.items()}}
    failures = getattr(scorer, "failures", None)
    if failures is not None and failures.by_reason:  # a judge's unparsable answers, an endpoint's timeouts
        report |= failures.report()
        print(f"kollm dpo pairs: {sum(failures.by_reason.values())} responses of {len(failures.by_prompt)} prompts "
              f"unscored ({dict(failures.by_reason)})", file=sys.stderr)
    print(json.dumps(report, ensure_ascii=False))
    return 0


__all__ = ["build_pairs", "choose_pairs", "make_scorer", "math_verifier", "final_number", "judge_scorer",
           "load_reward", "read_prompts", "read_responses", "write_jsonl", "main"]
