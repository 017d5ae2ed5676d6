"""What every LLM judge in kollm shares: FastChat's single-answer grading prompts (MT-Bench's
`llm_judge/data/judge_prompts.jsonl`) with its rating parser, and asking a judge until its answer
parses. Used by the chat benchmarks (`eval/judge.py`) and the preference-pair judge
(`data/pairs.py`), so it sits below both.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# FastChat llm_judge/data/judge_prompts.jsonl: single-v1, single-math-v1 and their multi-turn forms
_RATE = ('you must rate the response on a scale of 1 to 10 by strictly following this format: "[[rating]]", '
         'for example: "Rating: [[5]]".')
FASTCHAT = {
    "single": ("You are a helpful assistant.",
               "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by "
               "an AI assistant to the user question displayed below. Your evaluation should consider factors such as "
               "the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin "
               "your evaluation by providing a short explanation. Be as objective as possible. After providing your "
               f"explanation, {_RATE}\n\n[Question]\n{{question}}\n\n[The Start of Assistant's Answer]\n{{answer}}\n"
               "[The End of Assistant's Answer]"),
    "single-math": ("You are a helpful assistant.",
                    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided "
                    "by an AI assistant to the user question displayed below. Your evaluation should consider "
                    "correctness and helpfulness. You will be given a reference answer and the assistant's answer. "
                    "Begin your evaluation by comparing the assistant's answer with the reference answer. Identify and "
                    "correct any mistakes. Be as objective as possible. After providing your explanation, "
                    f"{_RATE}\n\n[Question]\n{{question}}\n\n[The Start of Reference Answer]\n{{ref_answer_1}}\n"
                    "[The End of Reference Answer]\n\n[The Start of Assistant's Answer]\n{answer}\n"
                    "[The End of Assistant's Answer]"),
    "multi": ("Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant "
              "to the user question displayed below. Your evaluation should consider factors such as the "
              "helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. You "
              "evaluation should focus on the assistant's answer to the second user question. Begin your evaluation "
              f"by providing a short explanation. Be as objective as possible. After providing your explanation, "
              f"{_RATE}\n\n",
              "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n### Assistant A:\n"
              "{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n"
              "<|The End of Assistant A's Conversation with User|>"),
    "multi-math": ("Please act as an impartial judge and evaluate the quality of the response provided by an AI "
                   "assistant to the user question. Your evaluation should consider correctness and helpfulness. You "
                   "will be given a reference answer and the assistant's answer. You evaluation should focus on the "
                   "assistant's answer to the second question. Begin your evaluation by comparing the assistant's "
                   "answer with the reference answer. Identify and correct any mistakes. Be as objective as possible. "
                   f"After providing your explanation, {_RATE}\n\n",
                   "<|The Start of Reference Answer|>\n\n### User:\n{question_1}\n\n### Reference answer:\n"
                   "{ref_answer_1}\n\n### User:\n{question_2}\n\n### Reference answer:\n{ref_answer_2}\n\n"
                   "<|The End of Reference Answer|>\n\n\n<|The Start of Assistant A's Conversation with User|>\n\n"
                   "### User:\n{question_1}\n\n### Assistant A:\n{answer_1}\n\n### User:\n{question_2}\n\n"
                   "### Assistant A:\n{answer_2}\n\n<|The End of Assistant A's Conversation with User|>"),
}

def parse_fastchat(judgment: str) -> float | None:
    m = re.search(r"\[\[(\d+\.?\d*)\]\]", judgment) or re.search(r"\[(\d+\.?\d*)\]", judgment)
    return float(m.group(1)) if m else None



def judge_turn(judge, messages: list[dict], parse: Callable[[str], float | None],
               retries: int) -> tuple[float | None, list[str], str | None]:
    """(rating, every judgment text asked for, error). Unparsable judgments are asked again
    (1 + retries at most); an endpoint failure that outlived the client's own retries (HTTP 4xx, a
    body without `choices`) ends the turn unscored with its error -- it never ends the run."""
    texts: list[str] = []
    for attempt in range(retries + 1):
        try:
            texts.append(judge.complete(messages, attempt=attempt))
        except RuntimeError as e:
            return None, texts, str(e)
        score = parse(texts[-1])
        if score is not None:
            return score, texts, None
    return None, texts, None
