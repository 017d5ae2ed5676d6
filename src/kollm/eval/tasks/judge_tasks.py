"""MT-Bench, KO-MT-Bench and LogicKor as harness tasks (LLM-as-judge, kollm.eval.judge).

Two-turn chat benchmarks do not fit the harness's one-generation-per-request batch (turn 2 needs
turn 1's answer), so these tasks issue no harness requests: each item is answered by the chat
endpoint `model_url` and graded by the judge endpoint `judge_url`, both OpenAI-compatible, inside
`process`. Build them with options, e.g.
`get_task("mt_bench", judge_url="http://host:8000/v1", judge_model="gpt-4", model_url=..., model_name=...)`;
`kollm.eval.judge.run_chat_benchmark` runs the same thing with concurrent requests.

Data: `mt_bench/question.jsonl` (FastChat `llm_judge/data/mt_bench/question.jsonl`),
`ko_mt_bench/question.jsonl` (same schema, Korean turns), `LogicKor/questions.jsonl`.
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

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kollm.data.judge import JudgeClient, JudgeConfig
from kollm.eval.judge import STYLES, ChatItem, Endpoint, ReplyCache, judge_item
from kollm.eval.task import Request, Task, register_task
from kollm.eval.tasks.common import EXTS, convert_rows, locate, read_rows

COUNTS = ("unparsable", "errors", "unscored")  # reported as counts over items, not means


class JudgeTask(Task):
    output_type = "generate"
    style = "fastchat"
    dirs: tuple[str, ...] = ()
    files: tuple[str, ...] = ()

    def __init__(self, judge_url: str | None = None, judge_model: str = "gpt-4", model_url: str | None = None,
                 model_name: str = "default", api_key_env: str | None = None, judge_retries: int = 2,
                 max_tokens: int = 2048, cache: str | None = None, request_retries: int = 6,
                 backoff_s: float = 1.0) -> None:
        super().__init__()
        self.bad_rows: list[str] = []
        self.errors: list[str] = []  # "qid turn N: error" for every turn a failed call left unscored
        key = os.environ.get(api_key_env) if api_key_env else None
        net = {"max_tokens": max_tokens, "max_retries": request_retries, "backoff_s": backoff_s}
        self.judge_cfg = JudgeConfig(judge_url, judge_model, api_key=key, **net) if judge_url else None
        self.model_cfg = JudgeConfig(model_url, model_name, **net) if model_url else None
        self.judge_retries = judge_retries
        self.sem = threading.Semaphore(1)
        self.cache = ReplyCache(cache) if cache else None

    def load(self, data_dir: Path | None) -> list[dict]:
        base = locate(data_dir, self.dirs, self.name)
        files = [base] if base.is_file() else [base / f for f in self.files if (base / f).exists()] or sorted(
            p for e in EXTS for p in base.glob(f"*.{e}"))
        if not files:
            raise FileNotFoundError(f"{self.name}: no question file under {base}")
        rows = [r for f in files for r in read_rows(f, self.bad_rows)]
        return convert_rows(rows, lambda r: {"chat": ChatItem.from_row(r)}, self.bad_rows)

    def requests(self, item: dict, fewshot: Sequence[dict] = ()) -> list[Request]:
        return []

    def process(self, item: dict, results: list[Any]) -> dict[str, Any]:
        if self.judge_cfg is None or self.model_cfg is None:
            raise ValueError(f"{self.name} needs a judge and a chat model endpoint: "
                             f"get_task({self.name!r}, judge_url=..., model_url=...)")
        build, parse = STYLES[self.style]
        chat: ChatItem = item["chat"]
        judge = Endpoint(JudgeClient(self.judge_cfg), self.sem, self.cache, "judge")
        model = Endpoint(JudgeClient(self.model_cfg), self.sem, self.cache, "model")
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
    files = ("question.jsonl",)


@register_task("ko_mt_bench")
class KoMTBench(JudgeTask):
    dirs = ("ko_mt_bench", "ko-mt-bench", "KoMT-Bench")
    files = ("question.jsonl",)


@register_task("logickor")
class LogicKor(JudgeTask):
    style = "logickor"
    dirs = ("LogicKor", "logickor")
    files = ("questions.jsonl",)
