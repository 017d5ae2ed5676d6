"""`kollm data judge`: LLM-as-judge educational-quality scores (0-5) for a sample of documents.

Trillion 7B §2 scores a sample of one million documents per language with Qwen-72B-Instruct and
distils the scores into a small classifier (`kollm data classifier`). The prompt follows the
additive 5-point rubric FineWeb-Edu used with Llama-3-70B, in English and in Korean (a Korean
document is judged with the Korean prompt, every other one with the English prompt). The judge is
any OpenAI-compatible `/v1/chat/completions` server (vLLM, SGLang, a hosted API; `kollm.openai_client`). Requests run
`concurrency` at a time, retry with exponential backoff on 429/5xx/network errors, and every answer
is appended to an on-disk cache before it counts, so an interrupted run resumes where it stopped.
An answer without a parsable score is counted and left out, never guessed.

`rubric="sft"` scores chat rows instead (Trillion §4 filters its SFT data with Qwen-2.5-72B scores
0-5 and keeps responses above 3, after the Prometheus absolute-grading judges, Kim et al. 2024):
every row of the input, the conversation shown to the judge, the row written back with its
`score` for `kollm sft`'s `data.min_score`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kollm.data import chat
from kollm.data.documents import iter_rows, resolve_inputs
from kollm.data.langid import LanguageIdentifier
from kollm.openai_client import ChatClient, ClientConfig

PROMPT_VERSION = "edu-v1"  # part of the cache key: changing a prompt must not reuse old answers

PROMPT_EN = """Below is an extract from a web page. Evaluate whether the page has a high educational value and \
could be useful in an educational setting for teaching from primary school to grade school levels, using \
the additive 5-point scoring system described below. Points accumulate for each criterion met:

- Add 1 point if the extract provides some basic information relevant to educational topics, even if it \
includes some irrelevant or non-academic content like advertisements and promotional material.
- Add another point if the extract addresses certain elements pertinent to education but does not align \
closely with educational standards. It might mix educational content with non-educational material.
- Award a third point if the extract is appropriate for educational use and introduces key concepts \
relevant to school curricula. It is coherent though it may not be comprehensive.
- Grant a fourth point if the extract is highly relevant and beneficial for educational purposes, with a \
clear and consistent writing style. It is similar to a chapter from a textbook or a tutorial.
- Bestow a fifth point if the extract is outstanding in its educational value, perfectly suited for \
teaching either at primary school or grade school, with detailed reasoning and no non-educational content.

Give 0 points if none of the criteria is met.

The extract:
<extract>
{text}
</extract>

After examining the extract, briefly justify your total score in up to 100 words, then conclude with the \
score in the format: "Educational score: <total points>"."""

PROMPT_KO = """아래는 웹 페이지에서 발췌한 글입니다. 이 글이 초등학교부터 중·고등학교 수준의 교육에 유용한 \
교육적 가치를 지니는지, 아래의 누적식 5점 채점 기준으로 평가하십시오. 충족하는 기준마다 점수가 더해집니다.

- 광고나 홍보 문구처럼 교육과 무관한 내용이 섞여 있더라도, 교육적 주제와 관련된 기본 정보를 제공하면 1점을 더합니다.
- 교육과 관련된 요소를 다루지만 교육 기준에 잘 맞지 않거나 비교육적 내용이 섞여 있으면 1점을 더 줍니다.
- 교육용으로 적절하고 교과 과정의 핵심 개념을 소개하며, 포괄적이지 않더라도 글이 일관되면 세 번째 점수를 줍니다.
- 교육 목적에 매우 적합하고 유익하며, 문체가 명확하고 일관되어 교과서의 한 장이나 강의 자료와 비슷하면 네 번째 점수를 줍니다.
- 교육적 가치가 탁월하여 초·중등 교육에 그대로 쓸 수 있고, 상세한 설명이 있으며 비교육적 내용이 없으면 다섯 번째 점수를 줍니다.

어떤 기준도 충족하지 않으면 0점을 줍니다.

발췌문:
<extract>
{text}
</extract>

발췌문을 검토한 뒤 총점의 근거를 100단어 이내로 간단히 설명하고, 마지막 줄에 반드시 다음 형식으로 점수를 쓰십시오: \
"Educational score: <총점>\""""

SFT_PROMPT_VERSION = "sft-v1"

PROMPT_SFT_EN = """Below is a conversation between a user and an AI assistant. Evaluate the quality of the \
assistant's final response as training data for a helpful assistant, using the additive 5-point scoring \
system described below. Points accumulate for each criterion met:

- Add 1 point if the response addresses the user's request, even if it is incomplete or partly wrong.
- Add another point if the response is correct: no factual, logical or arithmetic errors.
- Award a third point if the response is complete: it answers every part of the request and follows every \
explicit instruction (format, length, language).
- Grant a fourth point if the response is clear, well organised and written in the language the user wrote in.
- Bestow a fifth point if the response is excellent: what an expert would write, concise, with no \
unnecessary or unsafe content.

Give 0 points if the response is empty, off-topic, gibberish or an unjustified refusal.

The conversation:
<conversation>
{text}
</conversation>

After examining the conversation, briefly justify your total score in up to 100 words, then conclude with \
the score in the format: "Response score: <total points>"."""

PROMPT_SFT_KO = """아래는 사용자와 AI 어시스턴트의 대화입니다. 어시스턴트의 마지막 응답이 도움이 되는 어시스턴트를 \
학습시키는 데이터로서 얼마나 좋은지, 아래의 누적식 5점 채점 기준으로 평가하십시오. 충족하는 기준마다 점수가 더해집니다.

- 불완전하거나 일부 틀렸더라도 응답이 사용자의 요청을 다루면 1점을 더합니다.
- 응답이 정확하면(사실, 논리, 계산 오류가 없으면) 1점을 더 줍니다.
- 요청의 모든 부분에 답하고 명시된 지시(형식, 길이, 언어)를 모두 따르면 세 번째 점수를 줍니다.
- 응답이 명확하고 잘 정리되어 있으며 사용자가 쓴 언어로 작성되었으면 네 번째 점수를 줍니다.
- 전문가가 쓴 것처럼 탁월하고 간결하며 불필요하거나 해로운 내용이 없으면 다섯 번째 점수를 줍니다.

응답이 비어 있거나 주제와 무관하거나 의미 없는 글이거나 이유 없는 거절이면 0점을 줍니다.

대화:
<conversation>
{text}
</conversation>

대화를 검토한 뒤 총점의 근거를 100단어 이내로 간단히 설명하고, 마지막 줄에 반드시 다음 형식으로 점수를 쓰십시오: \
"Response score: <총점>\""""

RUBRICS = {"edu": (PROMPT_VERSION, PROMPT_EN, PROMPT_KO), "sft": (SFT_PROMPT_VERSION, PROMPT_SFT_EN, PROMPT_SFT_KO)}

# The last "score: N" wins (a rationale may quote the rubric's "1 point" first).
_SCORE = re.compile(r"(?:educational score|교육\s*점수|score|점수|총점)\s*[:：]?\s*\**\s*([0-5])(?![0-9.])", re.I)


def parse_score(answer: str) -> int | None:
    found = _SCORE.findall(answer or "")
    return int(found[-1]) if found else None


def build_messages(text: str, lang: str, max_chars: int, rubric: str = "edu") -> list[dict]:
    _, en, ko = RUBRICS[rubric]
    prompt = ko if lang == "ko" else en
    return [{"role": "user", "content": prompt.format(text=text[:max_chars])}]


@dataclass
class JudgeConfig(ClientConfig):
    max_chars: int = 6000  # documents are cut before prompting (FineWeb-Edu used ~2k tokens)
    rubric: str = "edu"  # edu: educational value of documents; sft: quality of a chat response


def sample_documents(inputs: list[str], per_language: int, seed: int = 0) -> tuple[list[dict], dict]:
    """Reservoir-sample up to `per_language` rows per language (the row's `lang`, else detected)."""
    rng = random.Random(seed)
    lid = LanguageIdentifier()
    reservoirs: dict[str, list[dict]] = {}
    seen: dict[str, int] = {}
    malformed = 0
    for path in resolve_inputs(inputs):
        for line, row, _reason in iter_rows(path):
            if row is None:
                malformed += 1
                continue
            lang = row.get("lang") or lid.predict(row["text"])[0]
            doc = {"id": str(row.get("id", f"{path}:{line}")), "text": row["text"], "lang": lang,
                   "source": f"{path}:{line}"}
            n = seen[lang] = seen.get(lang, 0) + 1
            res = reservoirs.setdefault(lang, [])
            if len(res) < per_language:
                res.append(doc)
            elif (j := rng.randrange(n)) < per_language:
                res[j] = doc
    docs = [d for lang in sorted(reservoirs) for d in sorted(reservoirs[lang], key=lambda d: d["source"])]
    return docs, {"seen_per_language": seen, "malformed_rows": malformed}


def cache_key(cfg: JudgeConfig, doc: dict) -> str:
    text = doc["text"][: cfg.max_chars]
    version = RUBRICS[cfg.rubric][0]
    return hashlib.sha256(f"{version}\0{cfg.model}\0{doc['lang'] == 'ko'}\0{text}".encode()).hexdigest()


def load_cache(path: Path) -> dict[str, str]:
    cache: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                cache[entry["key"]] = entry["answer"]
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut by an interrupted write: that document is asked again
    return cache


def judge_documents(docs: list[dict], cfg: JudgeConfig, cache_path: Path) -> tuple[list[dict], dict]:
    """Score `docs`; returns (rows with "score", summary). Answers go to `cache_path` as they come."""
    cache = load_cache(cache_path)
    client = ChatClient(cfg)
    lock = threading.Lock()
    todo = [d for d in docs if cache_key(cfg, d) not in cache]
    failed: list[str] = []
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    with open(cache_path, "a", encoding="utf-8") as out:
        if out.tell() and not cache_path.read_bytes().endswith(b"\n"):
            out.write("\n")  # end a line cut by an interrupted write, or the next entry joins it

        def work(doc: dict) -> None:
            try:
                answer = client.complete(build_messages(doc["text"], doc["lang"], cfg.max_chars, cfg.rubric))
            except RuntimeError as e:
                with lock:
                    failed.append(f"{doc['source']}: {e}")
                return
            key = cache_key(cfg, doc)
            with lock:
                cache[key] = answer
                out.write(json.dumps({"key": key, "answer": answer}, ensure_ascii=False) + "\n")
                out.flush()

        with ThreadPoolExecutor(max_workers=max(1, cfg.concurrency)) as pool:
            list(pool.map(work, todo))
    rows, unparsable = [], []
    for d in docs:
        answer = cache.get(cache_key(cfg, d))
        if answer is None:
            continue
        score = parse_score(answer)
        if score is None:
            unparsable.append({"source": d["source"], "answer": answer[:300]})
            continue
        rows.append({**d, "score": score})
    summary = {"documents": len(docs), "requested": len(todo), "from_cache": len(docs) - len(todo),
               "scored": len(rows), "unparsable": len(unparsable), "failed": len(failed),
               "unparsable_examples": unparsable[:20], "failed_examples": failed[:20],
               "score_histogram": {str(s): sum(r["score"] == s for r in rows) for s in range(6)}}
    return rows, summary


def run_judge(inputs: list[str], output: str, cfg: JudgeConfig, per_language: int, seed: int = 0) -> dict:
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    docs, sample_info = sample_documents(inputs, per_language, seed)
    rows, summary = judge_documents(docs, cfg, out / "cache.jsonl")
    with open(out / "judged.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    summary.update(sample_info, model=cfg.model, endpoint=cfg.endpoint, prompt_version=PROMPT_VERSION)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    return summary


def conversation_text(messages: list[dict]) -> str:
    """The conversation as the judge reads it: one labelled block per turn."""
    return "\n\n".join(f"[{m['role'].capitalize()}]\n{m['content'].strip()}" for m in messages)


def sample_conversations(inputs: list[str], limit: int | None = None) -> tuple[list[dict], dict]:
    """Every chat row of `inputs` (kollm.data.chat formats; the first `limit`), as judge documents
    that carry the row; bad rows are counted by reason with file:line."""
    lid = LanguageIdentifier()
    errors, docs = chat.RowErrors(), []
    for path in resolve_inputs(inputs):
        for line, row, reason in chat.iter_rows(path):
            if limit is not None and len(docs) >= limit:
                break
            if row is None:
                errors.add(reason, path, line)
                continue
            try:
                messages = chat.to_messages(row)
            except chat.BadRow as e:
                errors.add(e.reason, path, line)
                continue
            # the user's language picks the prompt's (a Korean request is judged in Korean)
            user = " ".join(m["content"] for m in messages if m["role"] == "user")
            docs.append({"id": str(row.get("id", f"{path}:{line}")), "text": conversation_text(messages),
                         "lang": lid.predict(user)[0], "source": f"{path}:{line}", "row": row})
    return docs, {"malformed_rows": errors.total, "malformed": errors.to_dict()}


def run_judge_sft(inputs: list[str], output: str, cfg: JudgeConfig, limit: int | None = None) -> dict:
    """Score chat rows with the SFT rubric; judged.jsonl holds each scored row with `score` added."""
    cfg = JudgeConfig(**{**cfg.__dict__, "rubric": "sft"})
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    docs, sample_info = sample_conversations(inputs, limit)
    rows, summary = judge_documents(docs, cfg, out / "cache.jsonl")
    with open(out / "judged.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({**r["row"], "score": r["score"], "judge_source": r["source"]}, ensure_ascii=False)
                    + "\n")
    summary.update(sample_info, model=cfg.model, endpoint=cfg.endpoint, prompt_version=SFT_PROMPT_VERSION,
                   kept_above_3=sum(r["score"] > 3 for r in rows))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    return summary
