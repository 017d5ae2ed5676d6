"""MT-Bench, KO-MT-Bench and LogicKor as harness tasks (LLM-as-judge, kollm.eval.judge).

Two-turn chat benchmarks do not fit the harness's one-generation-per-request batch (turn 2 needs
turn 1's answer), so these tasks issue no harness requests: each item is answered by the chat
endpoint `model_url` and graded by the judge endpoint `judge_url`, both OpenAI-compatible, inside
`process`. Build them with options, e.g.
`get_task("mt_bench", judge_url="http://host:8000/v1", judge_model="gpt-4", model_url=..., model_name=...)`;
`kollm.eval.judge.run_chat_benchmark` runs the same thing with concurrent requests.

Data: `mt_bench/question.jsonl` (FastChat `llm_judge/data/mt_bench/question.jsonl`);
`ko_mt_bench/question_ko.jsonl` or `question.jsonl`, or the KO-MT-Bench release's own
`mt_bench/question_ko.jsonl` (its `question.jsonl` beside it is the English original and is never
read for ko_mt_bench); `LogicKor/questions.jsonl`. When the release's judge prompts
(`judge_prompts_ko.jsonl` / FastChat's `judge_prompts.jsonl`, in the question folder or the one
above) and GPT-4 reference answers (`reference_answer_ko/gpt-4.jsonl` / `reference_answer/gpt-4.jsonl`
beside the questions) are present, the judge gets those, as the release's `gen_judgment.py` does;
otherwise FastChat's English prompts and the questions' inline `reference`. `source` in
results.json names every file used.
Metrics: `score` (mean of the two turn ratings of an item; the task value is the mean over items,
which equals FastChat's mean over turns when every turn is scored), `turn1`, `turn2`,
`category/<name>` (the benchmark's categories), and three counts: `unparsable` (turns whose
judgment never gave a rating), `errors` (turns whose answer or judge call failed past its retries:
the run goes on, the error is in the item's record) and `unscored` (items with no rating at all).
With `cache=PATH` (set by `kollm eval --out`) every reply is kept on disk as it arrives and a re-run
resumes. Each item's record in results.json holds the questions (`prompt`) and, per turn, the
answer, the judge's messages and replies (`responses`).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kollm.eval.judge import (
    NEED_REF_CATS,
    STYLES,
    ChatItem,
    Endpoint,
    ReplyCache,
    fastchat_messages,
    judge_item,
    read_judge_prompts,
    read_reference_answers,
)
from kollm.eval.task import Request, Task, register_task
from kollm.eval.tasks.common import EXTS, convert_rows, locate, read_rows
from kollm.openai_client import ChatClient, ClientConfig

COUNTS = ("unparsable", "errors", "unscored")  # reported as counts over items, not means


class JudgeTask(Task):
    output_type = "generate"
    style = "fastchat"
    dirs: tuple[str, ...] = ()
    candidates: tuple[str, ...] = ()  # question files, DIR/FILE under the data dir, first found wins
    korean_questions = False  # question_ko.jsonl (KO-MT-Bench) rather than question.jsonl

    def __init__(self, judge_url: str | None = None, judge_model: str = "gpt-4", model_url: str | None = None,
                 model_name: str = "default", api_key_env: str | None = None, judge_retries: int = 2,
                 max_tokens: int = 2048, cache: str | None = None, request_retries: int = 6,
                 backoff_s: float = 1.0) -> None:
        super().__init__()
        self.bad_rows: list[str] = []
        self.errors: list[str] = []  # "qid turn N: error" for every turn a failed call left unscored
        key = os.environ.get(api_key_env) if api_key_env else None
        net = {"max_tokens": max_tokens, "max_retries": request_retries, "backoff_s": backoff_s}
        self.judge_cfg = ClientConfig(judge_url, judge_model, api_key=key, **net) if judge_url else None
        self.model_cfg = ClientConfig(model_url, model_name, **net) if model_url else None
        self.judge_retries = judge_retries
        self.sem = threading.Semaphore(1)
        self.cache = ReplyCache(cache) if cache else None
        self.prompts: dict[str, tuple[str, str]] | None = None  # the release's judge prompts, when found
        self.source: dict = {}  # which question / judge prompt / reference files were used

    def question_file(self, data_dir: Path | None) -> Path:
        """The first of `candidates` (DIR/FILE paths) present, else any row file in the task's folder."""
        if data_dir is not None:
            for rel in self.candidates:
                if (Path(data_dir) / rel).is_file():
                    return Path(data_dir) / rel
        base = locate(data_dir, self.dirs, self.name)
        found = [base] if base.is_file() else sorted(
            p for e in EXTS for p in base.glob(f"*.{e}") if ("_ko" in p.stem) == self.korean_questions)
        if not found:
            raise FileNotFoundError(f"{self.name}: no question file under {base} (looked for "
                                    f"{', '.join(self.candidates)})")
        return found[0]

    def load(self, data_dir: Path | None) -> list[dict]:
        path = self.question_file(data_dir)
        items = convert_rows(read_rows(path, self.bad_rows), lambda r: {"chat": ChatItem.from_row(r)}, self.bad_rows)
        self.source = {"questions": str(path)}
        if self.style == "fastchat":
            self._release_judging(path, [it["chat"] for it in items])
        return items

    def _release_judging(self, path: Path, chats: list[ChatItem]) -> None:
        """Judge as the release does when it ships its judge prompts and GPT-4 reference answers
        (FastChat layout: `data/judge_prompts[_ko].jsonl`, `data/<bench>/reference_answer[_ko]/gpt-4.jsonl`);
        otherwise FastChat's English prompts with the questions' inline references (kollm's fallback)."""
        sfx = "_ko" if self.korean_questions else ""
        prompts = next((p for d in (path.parent, path.parent.parent) if (p := d / f"judge_prompts{sfx}.jsonl").is_file()),
                       None)
        if prompts is not None:
            self.prompts = read_judge_prompts(prompts)
        self.source["judge_prompts"] = str(prompts) if prompts else "built-in FastChat single-v1 prompts (English)"
        ref_dir = path.parent / f"reference_answer{sfx}"
        ref = ref_dir / "gpt-4.jsonl" if (ref_dir / "gpt-4.jsonl").is_file() else next(iter(sorted(
            ref_dir.glob("*.jsonl"))), None) if ref_dir.is_dir() else None
        if ref is None:
            self.source["reference_answers"] = "inline `reference` of the question file"
            return
        refs = read_reference_answers(ref)
        missing = []
        for chat in chats:
            if chat.category in NEED_REF_CATS:
                if chat.qid in refs:
                    chat.references = refs[chat.qid]
                else:
                    missing.append(chat.qid)
        self.source["reference_answers"] = str(ref)
        if missing:
            self.source["reference_missing"] = missing  # these keep their inline reference, if any

    def requests(self, item: dict, fewshot: Sequence[dict] = ()) -> list[Request]:
        return []

    def process(self, item: dict, results: list[Any]) -> dict[str, Any]:
        if self.judge_cfg is None or self.model_cfg is None:
            raise ValueError(f"{self.name} needs a judge and a chat model endpoint: "
                             f"get_task({self.name!r}, judge_url=..., model_url=...)")
        build, parse = STYLES[self.style]
        if self.prompts is not None:
            build = functools.partial(fastchat_messages, prompts=self.prompts)
        chat: ChatItem = item["chat"]
        judge = Endpoint(ChatClient(self.judge_cfg), self.sem, self.cache, "judge")
        model = Endpoint(ChatClient(self.model_cfg), self.sem, self.cache, "model")
        rec = judge_item(chat, judge, build, parse, self.judge_retries, model)
        # what results.json keeps for this item: the questions, and per turn the answer, the judge's
        # messages and every judge reply (the harness's usual prompt/responses are empty here)
        item["answers"], item["_prompt"], item["_responses"] = rec["answers"], chat.turns, rec["turns"]
        self.errors += [f"{chat.qid} turn {t}: {e}" for t, e in zip((1, 2), rec["errors"]) if e]
        scores = rec["scores"]
        ok = [s for s in scores if s is not None]
        score = sum(ok) / len(ok) if ok else None
        m: dict[str, Any] = {"score": score, "turn1": scores[0], "turn2": scores[1],
                             "unparsable": sum(s is None and e is None for s, e in zip(scores, rec["errors"])),
                             "errors": sum(e is not None for e in rec["errors"]), "unscored": int(not ok)}
        if ok and chat.category:
            m[f"category/{chat.category}"] = score
        return m

    def aggregate(self, per_item: list[dict[str, float]], bootstrap_iters: int = 1000,
                  seed: int = 1234) -> dict[str, dict[str, float]]:
        out = super().aggregate([{k: v for k, v in m.items() if k not in COUNTS} for m in per_item],
                                bootstrap_iters, seed)
        for name in COUNTS:
            out[name] = {"value": sum(m.get(name, 0) for m in per_item), "stderr": float("nan"), "n": len(per_item)}
        return out


@register_task("mt_bench")
class MTBench(JudgeTask):
    dirs = ("mt_bench", "mt-bench")
    candidates = ("mt_bench/question.jsonl", "mt-bench/question.jsonl")


@register_task("ko_mt_bench")
class KoMTBench(JudgeTask):
    # the release (LG-AI-EXAONE/KoMT-Bench) keeps FastChat's folder: data/mt_bench/question_ko.jsonl
    korean_questions = True
    dirs = ("ko_mt_bench", "ko-mt-bench", "KoMT-Bench")
    candidates = tuple(f"{d}/{f}" for d in dirs for f in ("question_ko.jsonl", "question.jsonl")) + (
        "mt_bench/question_ko.jsonl", "KoMT-Bench/FastChat/fastchat/llm_judge/data/mt_bench/question_ko.jsonl")


@register_task("logickor")
class LogicKor(JudgeTask):
    style = "logickor"
    dirs = ("LogicKor", "logickor")
    candidates = ("LogicKor/questions.jsonl", "logickor/questions.jsonl")
