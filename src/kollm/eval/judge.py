"""LLM-as-judge chat benchmarks: MT-Bench and KO-MT-Bench (FastChat's single-answer grading, 1-10)
and LogicKor (its own Korean judge prompt, 0-10), through OpenAI-compatible endpoints.

Flow, as FastChat `gen_model_answer` + `gen_judgment --mode single` and LogicKor `generator` +
`evaluator`: the answering model gets turn 1, then turn 2 with the turn-1 exchange as history
(greedy, temperature 0 for every category; FastChat samples creative categories at 0.7); the judge
grades turn 1 alone and turn 2 in the context of the whole conversation, with the reference answer
where the benchmark has one (FastChat: math, reasoning, coding). Ratings are parsed as FastChat
does (`[[N]]`, else `[N]`) or as LogicKor does (`점수: N` after removing `*`). A judgment without a
parsable rating is retried (`judge_retries` more times) and, if it never parses, counted in
`unparsable` and left out of the means -- never guessed (FastChat records -1, LogicKor 0). A call
that fails past the client's own retries (HTTP 4xx, a body without `choices`) leaves its turn
unscored with the error recorded, and the run goes on. With a cache file, every answer and
judgment is appended to disk as it arrives and a re-run asks only for what is missing.
At most `concurrency` requests are in flight at once, answers and judgments together.

Scores: MT-Bench = mean over all judged turns (FastChat's `show_result`), also per turn and per
category; LogicKor = mean of single-turn and multi-turn scores, per category (추론, 수학, 글쓰기,
코딩, 이해, 문법) and overall.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kollm.jsonrows import iter_rows
from kollm.judging import FASTCHAT, judge_turn, parse_fastchat
from kollm.openai_client import ChatClient, ClientConfig

NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")  # FastChat common.py

# LogicKor templates.py JUDGE_TEMPLATE (single_turn / multi_turn system prompts)
_LK_RULES = """1. 질문의 요구사항을 충분히 반영하였는지 상세히 분석할 것.
2. 답변 과정에서 누락되었거나 포함되지 못하여 아쉬운 부분에 대하여 상세히 분석할 것.
3. 답변의 길이가 평가 결과에 영향을 미치지 않도록 할 것.
4. Additional Reference가 제공된다면 평가 시 해당 정보를 참고할 것."""
_LK_TAIL = """

# 언어 요구사항
- 모델은 반드시 한국어로 답변해야 하며, 다른 언어로의 답변은 절대 허용되지 않는다.
- 예외적으로 질문이 영어로 답변할 것을 요구할 때에만 영어 답변이 허용된다.
- 한국어로 답변하지 않을 경우, 점수는 0점 처리된다.
- 언어 요구사항을 충족하는 것은 필수적이나, 이 요구사항의 충족이 답변의 질적 평가에 추가 점수로 이어지지는 않는다.

# 평가 출력 방식
**주어진 Question에 집중하여** Model's Response에 대한 평가와 1~10의 점수를 부여한다. 답변에 대한 평가는 4~5 문장으로 규칙을 참고하여 상세히 작성한다.

# 출력 형식
평가: 평가 내용
점수: 숫자"""
LOGICKOR = {
    "single_turn": "너는 질문에 대한 한국어 언어 모델의 답변을 매우 꼼꼼히 평가할 것이다. 공정한 평가를 위해 아래의 규칙을 "
                   "준수한다.\n\n# 기본 규칙\n" + _LK_RULES + _LK_TAIL,
    "multi_turn": "너는 대화 후 이어지는 후속 질문에 대한 한국어 언어 모델의 답변을 매우 꼼꼼히 평가할 것이다. 공정한 평가를 "
                  "위해 아래의 규칙을 준수한다.\n\n# 기본 규칙\n" + _LK_RULES
                  + "\n5. 후속 질문에 대한 답변이 이전 대화 맥락과 일치하는지 확인할 것." + _LK_TAIL,
}
LOGICKOR_CATEGORIES = ("추론", "수학", "글쓰기", "코딩", "이해", "문법")


def parse_logickor(judgment: str) -> float | None:
    m = re.search(r"점수:\s*(\d+(\.\d+)?)", judgment.replace("*", ""))
    return float(m.group(1)) if m else None


@dataclass
class ChatItem:
    """One two-turn question: MT-Bench `question.jsonl` (`question_id, category, turns, reference`) or
    LogicKor `questions.jsonl` (`id, category, questions, references`)."""

    qid: str
    category: str
    turns: list[str]
    references: list[str | None]

    @classmethod
    def from_row(cls, row: dict) -> ChatItem:
        turns = row.get("turns", row.get("questions"))
        if not isinstance(turns, list) or len(turns) < 2 or not all(isinstance(t, str) for t in turns[:2]):
            raise ValueError("needs two question turns in 'turns' (MT-Bench) or 'questions' (LogicKor)")
        refs = list(row.get("reference") or row.get("references") or [])
        refs = (refs + [None, None])[:2]
        qid = row.get("question_id", row.get("id"))
        if qid is None:
            raise KeyError("missing 'question_id' / 'id'")
        # LogicKor writes "추론(Reasoning)"; keep the Korean name its report uses
        return cls(str(qid), str(row.get("category", "")).split("(")[0].strip(), list(turns[:2]), refs)


class Endpoint:
    """A chat client behind a shared semaphore (the concurrency limit), with an optional on-disk
    cache: every reply is appended to a jsonl file as it arrives, keyed by (role, model, messages,
    attempt), so a re-run of an interrupted or partly failed benchmark asks only what is missing
    (judging costs money). `attempt` keeps a retried unparsable judgment from replaying itself."""

    def __init__(self, client: ChatClient, sem: threading.Semaphore, cache: ReplyCache | None = None,
                 role: str = "judge"):
        self.client, self.sem, self.cache, self.role = client, sem, cache, role

    def complete(self, messages: list[dict], attempt: int = 0) -> str:
        key = None
        if self.cache is not None:
            key = self.cache.key(self.role, self.client.cfg.model, messages, attempt)
            if (hit := self.cache.get(key)) is not None:
                return hit
        with self.sem:
            text = self.client.complete(messages)
        if key is not None:
            self.cache.put(key, text)
        return text


class ReplyCache:
    """`path` (jsonl): one `{"key", "text"}` line per reply, appended and flushed as it arrives; a
    torn last line (killed mid-write) is skipped on load."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock = threading.Lock()
        self.replies: dict[str, str] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.replies[row["key"]] = row["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        self.hits = 0

    @staticmethod
    def key(role: str, model: str, messages: list[dict], attempt: int) -> str:
        blob = json.dumps([role, model, messages, attempt], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, key: str) -> str | None:
        with self.lock:
            text = self.replies.get(key)
            self.hits += text is not None
            return text

    def put(self, key: str, text: str) -> None:
        with self.lock:
            self.replies[key] = text
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "text": text}, ensure_ascii=False) + "\n")
                f.flush()


# FastChat judge_prompts.jsonl names of the single-answer prompts -> our keys
_RELEASE_NAMES = {"single-v1": "single", "single-math-v1": "single-math", "single-v1-multi-turn": "multi",
                  "single-math-v1-multi-turn": "multi-math"}


def read_judge_prompts(path: str | Path) -> dict[str, tuple[str, str]]:
    """A release's judge prompt file (FastChat `judge_prompts.jsonl`, KO-MT-Bench
    `judge_prompts_ko.jsonl`: rows `{name, type, system_prompt, prompt_template, ...}`) → the four
    single-answer prompts as (system, template), the same shape as `FASTCHAT`."""
    out: dict[str, tuple[str, str]] = {}
    for n, row, reason in iter_rows(path):  # a judge's prompts must all be there: a bad row is fatal
        try:
            if reason:
                raise ValueError(reason)
            if row.get("name") in _RELEASE_NAMES:
                out[_RELEASE_NAMES[row["name"]]] = (str(row["system_prompt"]), str(row["prompt_template"]))
        except (ValueError, KeyError) as e:
            raise ValueError(f"{path}:{n}: not a judge prompt row ({type(e).__name__}: {e})") from None
    if missing := sorted(set(_RELEASE_NAMES) - {k for k, v in _RELEASE_NAMES.items() if v in out}):
        raise ValueError(f"{path}: no judge prompt named {', '.join(missing)}")
    return out


def read_reference_answers(path: str | Path) -> dict[str, list[str | None]]:
    """FastChat `reference_answer/gpt-4.jsonl` (KO-MT-Bench `reference_answer_ko/gpt-4.jsonl`): rows
    `{question_id, choices: [{turns: [a1, a2]}]}` → {qid: [a1, a2]}."""
    out: dict[str, list[str | None]] = {}
    for n, row, reason in iter_rows(path):
        try:
            if reason:
                raise ValueError(reason)
            turns = list(row["choices"][0]["turns"])
            out[str(row["question_id"])] = (turns + [None, None])[:2]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ValueError(f"{path}:{n}: not a reference answer row ({type(e).__name__}: {e})") from None
    return out


def fastchat_messages(item: ChatItem, answers: Sequence[str], turn: int,
                      prompts: dict[str, tuple[str, str]] = FASTCHAT) -> list[dict]:
    """FastChat single-answer grading; `prompts` are the release's own (KO-MT-Bench's Korean ones)
    when it ships them, else FastChat's English prompts."""
    ref = item.category in NEED_REF_CATS and item.references[0] is not None
    q1, q2 = item.turns
    if turn == 1:
        system, tmpl = prompts["single-math" if ref else "single"]
        user = tmpl.format(question=q1, answer=answers[0], ref_answer_1=item.references[0])
    else:
        system, tmpl = prompts["multi-math" if ref else "multi"]
        user = tmpl.format(question_1=q1, question_2=q2, answer_1=answers[0], answer_2=answers[1],
                           ref_answer_1=item.references[0], ref_answer_2=item.references[1] or "")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def logickor_messages(item: ChatItem, answers: Sequence[str], turn: int) -> list[dict]:
    """LogicKor evaluator.create_answers: the single-turn prompt shows Q1/A1; the multi-turn one adds
    the follow-up Q2/A2; references go after their question as **Additional Reference**."""
    p = ("아래의 내용을 주어진 평가 기준들을 충실히 반영하여 평가해라. 특히 모델 답변이 언어 요구사항을 준수하는지 반드시 "
         f"확인해야 한다.\n\n**Question**\n{item.turns[0]}")
    if item.references[0]:
        p += f"\n\n**Additional Reference**\n{item.references[0]}"
    p += f"\n\n**Model's Response**\n{answers[0]}"
    if turn == 2:
        p += f"\n\n**Follow-up Question.**\n{item.turns[1]}"
        if item.references[1]:
            p += f"\n\n**Additional Reference**\n{item.references[1]}"
        p += f"\n\n**Model's Response**\n{answers[1]}"
    p += "\n\n[[대화 종료. 평가 시작.]]"
    return [{"role": "system", "content": LOGICKOR["multi_turn" if turn == 2 else "single_turn"]},
            {"role": "user", "content": p}]


STYLES: dict[str, tuple[Callable, Callable[[str], float | None]]] = {
    "fastchat": (fastchat_messages, parse_fastchat), "logickor": (logickor_messages, parse_logickor)}


def answer_two_turns(model, item: ChatItem) -> list[str]:
    """Turn 1, then turn 2 with the first exchange as history (FastChat / LogicKor generators)."""
    msgs = [{"role": "user", "content": item.turns[0]}]
    a1 = model.complete(msgs)
    a2 = model.complete(msgs + [{"role": "assistant", "content": a1}, {"role": "user", "content": item.turns[1]}])
    return [a1, a2]


def judge_item(item: ChatItem, judge, build: Callable, parse: Callable[[str], float | None], retries: int,
               model=None, answers: list[str] | None = None) -> dict:
    """Answer (unless `answers` are given) and judge both turns of one item. The record keeps, per
    turn, the question, the model's answer, the judge's messages and every judge reply, so a score
    can be audited; a failed answer or judge call is recorded as `error` and leaves the turn None."""
    rec: dict = {"qid": item.qid, "category": item.category, "answers": answers, "scores": [None, None],
                 "judgments": [[], []], "errors": [None, None], "turns": []}
    if answers is None:
        try:
            answers = answer_two_turns(model, item)
        except RuntimeError as e:
            rec["errors"] = [f"answering: {e}"] * 2
            rec["turns"] = [{"turn": t, "question": item.turns[t - 1], "answer": None, "judge_messages": None,
                             "judgments": [], "score": None, "error": f"answering: {e}"} for t in (1, 2)]
            return rec
    rec["answers"] = answers
    for turn in (1, 2):
        msgs = build(item, answers, turn)
        score, texts, err = judge_turn(judge, msgs, parse, retries)
        rec["scores"][turn - 1], rec["judgments"][turn - 1], rec["errors"][turn - 1] = score, texts, err
        rec["turns"].append({"turn": turn, "question": item.turns[turn - 1], "answer": answers[turn - 1],
                             "judge_messages": msgs, "judgments": texts, "score": score, "error": err})
    return rec


def run_chat_benchmark(items: Sequence[ChatItem], judge_cfg: ClientConfig, style: str = "fastchat",
                       model_cfg: ClientConfig | None = None, answers: dict[str, list[str]] | None = None,
                       concurrency: int = 4, judge_retries: int = 2, cache: str | Path | None = None) -> dict:
    """Answer (with `model_cfg`'s endpoint, unless `answers` maps qid → [a1, a2]) and judge every item.
    `cache`: a jsonl file every reply is appended to, and read back on a re-run.
    Returns {"records": [...], "metrics": {...}}."""
    if style not in STYLES:
        raise ValueError(f"judge style {style!r}: one of {sorted(STYLES)}")
    if answers is None and model_cfg is None:
        raise ValueError("give the answering model's endpoint (model_cfg) or precomputed answers")
    build, parse = STYLES[style]
    sem = threading.Semaphore(max(1, concurrency))
    store = ReplyCache(cache) if cache else None
    judge = Endpoint(ChatClient(judge_cfg), sem, store, "judge")
    model = Endpoint(ChatClient(model_cfg), sem, store, "model") if model_cfg else None

    def one(item: ChatItem) -> dict:
        return judge_item(item, judge, build, parse, judge_retries, model,
                          answers[item.qid] if answers is not None else None)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        records = list(pool.map(one, items))
    return {"records": records, "metrics": summarize(records, style)}


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def summarize(records: Sequence[dict], style: str = "fastchat") -> dict:
    """Means over parsed ratings only; `unparsable` counts the turns whose judgment never gave a
    rating, `errors` those whose answer or judge call failed (both left out of the means)."""
    turn = {1: [], 2: []}
    by_cat: dict[str, list[float]] = defaultdict(list)
    for r in records:
        for t, s in zip((1, 2), r["scores"]):
            if s is not None:
                turn[t].append(s)
                by_cat[r["category"]].append(s)
    name = "single" if style == "logickor" else "turn1"
    out = {"score": _mean(turn[1] + turn[2]), name: _mean(turn[1]),
           "multi" if style == "logickor" else "turn2": _mean(turn[2]),
           "scored_turns": len(turn[1]) + len(turn[2]),
           "unparsable": sum(s is None and e is None for r in records for s, e in zip(r["scores"], r["errors"])),
           "errors": sum(e is not None for r in records for e in r["errors"]),
           "judge_calls": sum(len(j) for r in records for j in r["judgments"]),
           "categories": {c: _mean(v) for c, v in sorted(by_cat.items())}}
    return out
