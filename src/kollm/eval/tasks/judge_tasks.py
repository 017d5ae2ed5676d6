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
which equals FastChat's mean over turns when no judgment is unparsable), `turn1`, `turn2`, and
`unparsable` (turns whose judgment never gave a rating, left out of the means).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kollm.data.judge import JudgeClient, JudgeConfig
from kollm.eval.judge import STYLES, ChatItem, answer_two_turns, judge_turn
from kollm.eval.task import Request, Task, register_task
from kollm.eval.tasks.common import EXTS, convert_rows, locate, read_rows


class JudgeTask(Task):
    output_type = "generate"
    style = "fastchat"
    dirs: tuple[str, ...] = ()
    files: tuple[str, ...] = ()

    def __init__(self, judge_url: str | None = None, judge_model: str = "gpt-4", model_url: str | None = None,
                 model_name: str = "default", api_key_env: str | None = None, judge_retries: int = 2,
                 max_tokens: int = 2048) -> None:
        super().__init__()
        self.bad_rows: list[str] = []
        key = os.environ.get(api_key_env) if api_key_env else None
        self.judge_cfg = JudgeConfig(judge_url, judge_model, api_key=key, max_tokens=max_tokens) if judge_url else None
        self.model_cfg = JudgeConfig(model_url, model_name, max_tokens=max_tokens) if model_url else None
        self.judge_retries = judge_retries

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
        answers = answer_two_turns(JudgeClient(self.model_cfg), chat)
        judge = JudgeClient(self.judge_cfg)
        scores = [judge_turn(judge, build(chat, answers, t), parse, self.judge_retries)[0] for t in (1, 2)]
        item["answers"] = answers
        ok = [s for s in scores if s is not None]
        return {"score": sum(ok) / len(ok) if ok else None, "turn1": scores[0], "turn2": scores[1],
                "unparsable": float(len(scores) - len(ok))}


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
