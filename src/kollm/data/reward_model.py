"""A scalar reward model as a preference scorer (DNA 1.0 §4.4: "a reward model" judges the
policy's responses for relevance, helpfulness and safety; it names no model).

- `RewardModel`: a Hugging Face `*ForSequenceClassification` checkpoint with one label (the
  Llama / Qwen2 / Gemma layout of Skywork-Reward, ArmoRM's scalar head, FsfairX-RM, ...) run in
  process by transformers itself, batched (sorted by length, padded; the head reads the last
  non-pad token, so padding does not change a score). The conversation is the reward model's own
  chat template over [user: prompt, assistant: response] (a message-list prompt is kept as is),
  else prompt + "\\n\\n" + response.
- `RewardEndpoint`: the same conversation text sent to a `/classify` endpoint (vLLM
  `--runner pooling`, SGLang), batched; the score is the one class's value (vLLM may pass it
  through a sigmoid: monotone, so best-vs-worst pairs are the same).

A head with more than one label is refused with an error naming the checkpoint or endpoint (a
classifier's class scores are not a reward). An endpoint that times out or answers badly leaves
those responses unscored, and `failures` counts them by reason and by prompt for the report.
Both are `kollm.data.pairs` scorers: `score_batch(items)` is used where there is one.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from kollm.data.chat import prompt_text


def conversation_text(tokenizer, prompt, response: str) -> str:
    if isinstance(prompt, list):
        messages = [*prompt, {"role": "assistant", "content": response}]
    else:
        messages = [{"role": "user", "content": str(prompt)}, {"role": "assistant", "content": response}]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n\n".join(m.get("content", "") for m in messages)


def prompt_key(prompt, row: dict) -> str:
    """How a failure names its prompt in the report: the row's id, else the prompt's start."""
    if isinstance(row, dict) and row.get("id") is not None:
        return str(row["id"])
    return prompt_text(prompt)[:60]


class Failures:
    """Unscored responses by reason and by prompt (kollm dpo pairs / --online report them)."""

    def __init__(self):
        self.by_reason: Counter = Counter()
        self.by_prompt: dict[str, Counter] = {}

    def add(self, reason: str, prompt, row: dict) -> None:
        self.by_reason[reason] += 1
        self.by_prompt.setdefault(prompt_key(prompt, row), Counter())[reason] += 1

    def report(self, limit: int = 20) -> dict:
        if not self.by_reason:
            return {}
        return {"unscored": sum(self.by_reason.values()), "unscored_prompts": len(self.by_prompt),
                **{f"unscored_{k}": v for k, v in self.by_reason.items()},
                "unscored_by_prompt": {k: dict(v) for k, v in list(self.by_prompt.items())[:limit]}}


class RewardModel:
    def __init__(self, path: str | Path, device: str | None = None, dtype=None, batch_size: int = 8,
                 max_length: int = 4096):
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        self.path = str(path)
        cfg = AutoConfig.from_pretrained(self.path)
        if getattr(cfg, "num_labels", 1) != 1:
            raise ValueError(f"{self.path}/config.json: the reward model's head has {cfg.num_labels} labels "
                             "(num_labels); a scalar reward model has exactly 1")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or (torch.bfloat16 if self.device.startswith("cuda") else torch.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModelForSequenceClassification.from_pretrained(self.path, dtype=dtype).to(self.device).eval()
        pad = self.model.config.pad_token_id
        if pad is None:  # the head finds the last real token by pad id: it must be one
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
            self.model.config.pad_token_id = pad
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token_id = pad
        self.batch_size, self.max_length = batch_size, max_length
        self.failures = Failures()

    def score_batch(self, items: Sequence[tuple[object, str, dict]]) -> list[float | None]:
        import torch

        texts = [conversation_text(self.tokenizer, p, r) for p, r, _ in items]
        enc = [self.tokenizer(t, add_special_tokens=False, truncation=True, max_length=self.max_length)["input_ids"]
               for t in texts]
        order = sorted(range(len(enc)), key=lambda i: -len(enc[i]))
        out: list[float | None] = [None] * len(enc)
        pad = self.model.config.pad_token_id
        with torch.no_grad():
            for s in range(0, len(order), self.batch_size):
                part = order[s:s + self.batch_size]
                T = max(len(enc[i]) for i in part)
                ids = torch.full((len(part), T), pad, dtype=torch.long)
                mask = torch.zeros((len(part), T), dtype=torch.long)
                for b, i in enumerate(part):  # right padding: the head's last non-pad token is the last real one
                    ids[b, :len(enc[i])] = torch.tensor(enc[i])
                    mask[b, :len(enc[i])] = 1
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                for b, i in enumerate(part):
                    out[i] = float(logits[b, 0].float())
        return out

    def __call__(self, prompt, response: str, row: dict) -> float | None:
        return self.score_batch([(prompt, response, row)])[0]


class RewardEndpoint:
    def __init__(self, url: str, model: str = "default", tokenizer: str | None = None, batch_size: int = 16,
                 timeout: float = 300.0, api_key: str | None = None):
        self.url = url.rstrip("/").removesuffix("/v1").removesuffix("/classify") + "/classify"
        self.model, self.batch_size, self.timeout, self.api_key = model, batch_size, timeout, api_key
        self.tokenizer = None
        if tokenizer:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        self.failures = Failures()

    def _post(self, texts: list[str]) -> list[float]:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.api_key}"}
                                                         if self.api_key else {})}
        req = urllib.request.Request(self.url, data=json.dumps({"model": self.model, "input": texts}).encode(),
                                     headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            data = sorted(json.loads(resp.read())["data"], key=lambda d: d.get("index", 0))
        scores = []
        for d in data:
            probs = d.get("probs") if d.get("probs") is not None else d.get("logits")
            n = d.get("num_classes", len(probs) if isinstance(probs, list) else 1)
            if n != 1:
                raise ValueError(f"{self.url}: the reward model's head has {n} labels; a scalar reward model has "
                                 "exactly 1")
            scores.append(float(probs[0] if isinstance(probs, list) else probs))
        if len(scores) != len(texts):
            raise KeyError("data")
        return scores

    def score_batch(self, items: Sequence[tuple[object, str, dict]]) -> list[float | None]:
        out: list[float | None] = []
        for s in range(0, len(items), self.batch_size):
            part = items[s:s + self.batch_size]
            try:
                out += self._post([conversation_text(self.tokenizer, p, r) for p, r, _ in part])
                continue
            except TimeoutError:
                why = "timeout"
            except urllib.error.HTTPError as e:
                why = f"http_{e.code}"
            except urllib.error.URLError as e:
                why = "timeout" if isinstance(e.reason, TimeoutError) else "unreachable"
            except (KeyError, IndexError, TypeError, json.JSONDecodeError):
                why = "bad_response"
            for p, _, row in part:
                self.failures.add(why, p, row)
            out += [None] * len(part)
        return out

    def __call__(self, prompt, response: str, row: dict) -> float | None:
        return self.score_batch([(prompt, response, row)])[0]


def reward_model_scorer(spec: dict):
    """`{path}` (in process) or `{endpoint, model, tokenizer}`; batch_size, max_length, timeout."""
    unknown = set(spec) - {"path", "endpoint", "model", "tokenizer", "batch_size", "max_length", "timeout"}
    if unknown:
        raise KeyError(f"reward_model.{sorted(unknown)[0]}: unknown key (known: path, endpoint, model, tokenizer, "
                       "batch_size, max_length, timeout)")
    if bool(spec.get("path")) == bool(spec.get("endpoint")):
        raise ValueError("reward_model: give one of path (a checkpoint) or endpoint (a /classify URL)")
    if spec.get("path"):
        return RewardModel(spec["path"], batch_size=int(spec.get("batch_size", 8)),
                           max_length=int(spec.get("max_length", 4096)))
    return RewardEndpoint(spec["endpoint"], spec.get("model", "default"), spec.get("tokenizer"),
                          int(spec.get("batch_size", 16)), float(spec.get("timeout", 300.0)))


__all__ = ["Failures", "RewardEndpoint", "RewardModel", "conversation_text", "reward_model_scorer"]
