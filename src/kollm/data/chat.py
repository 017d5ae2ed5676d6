"""Chat data: rows in the formats people already have → messages → token ids with a training mask.

Every post-training stage (SFT, DPO, distillation, GRPO) and the server render conversations here,
with the tokenizer's own `chat_template` through transformers' `apply_chat_template`, so training
sees exactly what `transformers`, vLLM, `kollm generate` (unless --raw) and `kollm serve` render at
inference. Tokenizers without a template (kollm's older ones, base models) get kollm's default:
Llama 3's headers and `<|eot_id|>`, with `{% generation %}` blocks around each assistant reply
so that transformers' `return_assistant_tokens_mask` and TRL's `assistant_only_loss` see the same
mask kollm trains on.

Row formats (TRL's and OpenAI's, the ones datasets ship in):
- `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`
- `{"prompt": str | messages, "completion": str | messages}`
- `{"instruction": str, "input": str (optional), "output": str}` (Alpaca)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from kollm.jsonrows import JSONL_SUFFIXES, PARQUET_SUFFIXES, RowErrors, iter_rows

# Llama 3's template (BOS once, a header per message, trimmed content, <|eot_id|>), with the
# assistant's content and its end-of-turn token inside {% generation %}: the tokens SFT trains.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.index0 == 0 and bos_token %}{{ bos_token }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
END_OF_TURN = "<|eot_id|>"
ROLES = ("system", "user", "assistant")


class BadRow(ValueError):
    """A row that cannot become a conversation; `reason` is the short key it is counted under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# -- tokenizer ---------------------------------------------------------------------------------
def load_tokenizer(path: str | Path):
    """A transformers tokenizer from a Hugging Face / kollm directory or a `tokenizer.json`, with
    kollm's default chat template installed when it has none."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    p = Path(path)
    if p.is_file() and p.name.endswith(".json"):
        tok = PreTrainedTokenizerFast(tokenizer_file=str(p))
    elif p.is_dir():
        from kollm.model.hf import require_tokenizer

        require_tokenizer(p)
        try:
            tok = AutoTokenizer.from_pretrained(str(p))
        except (OSError, ValueError) as e:
            raise ValueError(f"{p}: cannot load a tokenizer: {e}") from None
    else:
        raise FileNotFoundError(f"{p}: no tokenizer directory or tokenizer.json")
    if not getattr(tok, "chat_template", None):
        tok.chat_template = DEFAULT_CHAT_TEMPLATE
    return tok


# -- rows → messages ---------------------------------------------------------------------------
def _as_messages(value, role: str, field: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return value
    raise BadRow("bad_field_type", f"{field!r} must be a string or a list of messages")


def to_messages(row: dict) -> list[dict]:
    """Normalise one row to OpenAI messages; raises BadRow naming why it cannot be trained on."""
    if not isinstance(row, dict):
        raise BadRow("not_an_object")
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list):
            raise BadRow("bad_field_type", "'messages' must be a list")
    elif "prompt" in row and "completion" in row:
        messages = _as_messages(row["prompt"], "user", "prompt") + _as_messages(row["completion"], "assistant",
                                                                                 "completion")
    elif "instruction" in row and "output" in row:
        inp = row.get("input") or ""
        if not isinstance(row["instruction"], str) or not isinstance(inp, str):
            raise BadRow("bad_field_type", "'instruction'/'input' must be strings")
        user = row["instruction"] + (f"\n\n{inp}" if inp.strip() else "")
        messages = [{"role": "user", "content": user}, *_as_messages(row["output"], "assistant", "output")]
    else:
        raise BadRow("unknown_format", f"expected messages, prompt/completion or instruction/output; got keys "
                                       f"{sorted(row)[:8]}")
    out = check_messages(messages)
    if not any(m["role"] == "assistant" for m in out):
        raise BadRow("no_assistant_turn")
    return out


def check_messages(messages: list) -> list[dict]:
    """Each message a {role, content} with a known role and some text (copied without other keys);
    raises BadRow naming the first that is not."""
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise BadRow("bad_message", f"message {i} needs 'role' and 'content'")
        if m["role"] not in ROLES:
            raise BadRow("unknown_role", f"message {i} has role {m['role']!r}")
        if not isinstance(m["content"], str) or not m["content"].strip():
            raise BadRow("empty_content", f"message {i} ({m['role']}) has no text")
        out.append({"role": m["role"], "content": m["content"]})
    return out


# -- messages → ids + mask ---------------------------------------------------------------------
def _text(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> tuple[list[int], list[bool]]:
    """Token ids of the templated conversation and, per token, whether it is trained: the content
    of each assistant turn and what the template closes it with (its end-of-turn token), never the
    role headers or other turns.

    The assistant spans come from rendering prefixes of the conversation: the reply to turn i
    starts where `messages[:i]` + generation prompt ends and ends where `messages[:i+1]` ends. That
    holds for any template that renders a conversation as the concatenation of its turns (Llama 3,
    ChatML, Gemma, ...); one that does not is refused rather than trained on a wrong mask.
    """
    full = _text(tokenizer, messages, add_generation_prompt)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = _text(tokenizer, messages[:i], True) if i else ""
        end = _text(tokenizer, messages[: i + 1], False)
        # the last reply may end with a template suffix after it; only a prefix relation is needed
        if not (full.startswith(start) and full.startswith(end) and len(end) > len(start)):
            raise ValueError("the tokenizer's chat template does not render a conversation as the concatenation "
                             "of its turns; kollm cannot find the assistant tokens to train on")
        spans.append((len(start), len(end)))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    trained = [any(s <= a < e for s, e in spans) for a, _ in offsets]
    return ids, trained


def render_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Ids of a prompt ready for generation (the template's assistant header appended)."""
    return tokenizer(_text(tokenizer, messages, True), add_special_tokens=False)["input_ids"]


def prompt_text(prompt) -> str:
    """The question a judge sees: the prompt string or the last user turn."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1] if users else ""


def encode_prompt(tokenizer, prompt: str | list[dict], chat: bool = True, system: str | None = None) -> list[int]:
    """A prompt string or message list → ids ending where the assistant's answer starts: the chat
    template's generation prompt (`render_prompt`; a string is one user message), or the raw text
    for a base model or a tokenizer without a template. `system`: a system turn first, unless the
    message list has its own; it needs the template."""
    if chat and getattr(tokenizer, "chat_template", None):
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
        if system and not (messages and messages[0].get("role") == "system"):
            messages = [{"role": "system", "content": system}, *messages]
        return render_prompt(tokenizer, messages)
    if system:
        raise ValueError("data.system_prompt is applied through the chat template: it needs data.chat_template: true")
    if isinstance(prompt, list):
        prompt = "\n".join(m.get("content", "") for m in prompt)
    return tokenizer(prompt)["input_ids"]


def checkpoint_eos_ids(model_dir: str | Path) -> list[int]:
    """The checkpoint's EOS ids, from where transformers' generate reads them: generation_config.json,
    else config.json."""
    for name in ("generation_config.json", "config.json"):
        f = Path(model_dir) / name
        if f.is_file():
            eos = json.loads(f.read_text()).get("eos_token_id")
            if eos is not None:
                return [eos] if isinstance(eos, int) else list(eos)
    return []


def stop_token_ids(tokenizer, model_dir: str | Path | None = None) -> list[int]:
    """Ids that end an assistant turn: with `model_dir`, the checkpoint's EOS ids first (what
    transformers' generate stops on; `kollm generate`, `kollm serve` and GRPO pass it), then the
    end-of-turn token when the vocabulary has it, and the tokenizer's EOS."""
    ids = checkpoint_eos_ids(model_dir) if model_dir is not None else []
    eot = tokenizer.convert_tokens_to_ids(END_OF_TURN) if END_OF_TURN in tokenizer.get_vocab() else None
    for i in (eot, tokenizer.eos_token_id):
        if i is not None and i not in ids:
            ids.append(i)
    return ids


# -- files (rows are read by kollm.jsonrows, the one reader: a row that is not a JSON object,
# `null` included, is counted as not_an_object) -----------------------------------------------
def data_files(spec: str | Path) -> list[Path]:
    """A file, or every JSONL/Parquet file under a directory (sorted)."""
    p = Path(spec)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(q for q in p.rglob("*") if q.is_file() and q.name.endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES))
        if files:
            return files
        raise FileNotFoundError(f"{p}: no .jsonl/.json(.gz)/.parquet files")
    raise FileNotFoundError(f"{p}: no such data file or directory")


def read_conversations(spec: str | Path, errors: RowErrors | None = None) -> Iterator[tuple[str, int, dict, list[dict]]]:
    """(file, line, row, messages) for every row of `spec` that is a trainable conversation;
    the others go to `errors` by reason."""
    errors = errors if errors is not None else RowErrors()
    for f in data_files(spec):
        for line, row, reason in iter_rows(f):
            if row is None:
                errors.add(reason, f, line)
                continue
            try:
                yield str(f), line, row, to_messages(row)
            except BadRow as e:
                errors.add(e.reason, f, line)


__all__ = ["DEFAULT_CHAT_TEMPLATE", "END_OF_TURN", "BadRow", "RowErrors", "check_messages", "checkpoint_eos_ids", "data_files",
           "encode_prompt", "iter_rows", "load_tokenizer", "prompt_text", "read_conversations", "render", "render_prompt", "stop_token_ids",
           "to_messages"]
