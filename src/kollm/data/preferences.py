"""Preference pairs in TRL's format, tokenized the way TRL's `DPOTrainer` does, and the data
source the trainer draws DPO batches from.

Rows (JSONL(.gz) / Parquet): `chosen` and `rejected`, plus `prompt` and an optional `id`. Each of
the three is a string or a message list (`[{"role": ..., "content": ...}]`). Without `prompt`, the
prompt is implicit: the longest common prefix of the two (whole turns for message lists,
characters for strings, as trl.data_utils.extract_prompt). A row that mixes a message list with
strings is conversational: a string prompt becomes one user turn, a string completion one
assistant turn.

Tokenization (trl `_prepare_dataset`): conversational rows are rendered by the chat template
(kollm.data.chat.render) — the prompt with the generation prompt, then prompt + completion;
plain strings are tokenized as `prompt` and `prompt + completion + EOS`. The completion starts
where the prompt and prompt + completion ids first differ. Sequences are cut at `max_length`
keeping the start; a pair whose prompt alone fills `max_length` is dropped (counted).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kollm.data import IGNORE
from kollm.data.chat import BadRow, RowErrors, data_files, iter_rows, render

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Pair:
    prompt: str | list[dict]
    chosen: str | list[dict]
    rejected: str | list[dict]
    id: str | None = None
    path: str = ""
    line: int = 0

    @property
    def conversational(self) -> bool:
        return isinstance(self.chosen, list)


@dataclass
class TokenizedPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    id: str | None = None


def _messages(value, key: str) -> list[dict]:
    if not value:
        raise BadRow(f"empty_{key}")
    for m in value:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise BadRow("malformed_message")
        if m["role"] not in ROLES:
            raise BadRow("unknown_role")
        if not isinstance(m["content"], str):
            raise BadRow("malformed_message")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def extract_prompt(chosen, rejected):
    """TRL's implicit prompt: the longest common prefix (turns or characters); a space just before
    the split goes with the completion."""
    idx = 0
    for idx in range(min(len(chosen), len(rejected))):
        if chosen[idx] != rejected[idx]:
            if idx > 0 and chosen[idx - 1] == " ":
                idx -= 1
            break
    else:
        idx = min(len(chosen), len(rejected))
    return chosen[:idx], chosen[idx:], rejected[idx:]


def parse_pair(row: dict, path: str = "", line: int = 0) -> Pair:
    """A TRL preference row → Pair; raises BadRow with a short reason."""
    if not isinstance(row, dict):
        raise BadRow("not_an_object")
    for key in ("chosen", "rejected"):
        if key not in row or row[key] is None:
            raise BadRow(f"missing_{key}")
    if row["chosen"] == row["rejected"]:  # the DPO loss of such a pair is constant: nothing to learn
        raise BadRow("chosen_equals_rejected")
    values = {k: row.get(k) for k in ("prompt", "chosen", "rejected")}
    for k, v in values.items():
        if v is not None and not isinstance(v, (str, list)):
            raise BadRow(f"bad_{k}_type")
    if values["prompt"] is None:
        if type(values["chosen"]) is not type(values["rejected"]):
            raise BadRow("mixed_types")
        values["prompt"], values["chosen"], values["rejected"] = extract_prompt(values["chosen"], values["rejected"])
        if not values["prompt"]:
            raise BadRow("no_common_prompt")
    if any(isinstance(v, list) for v in values.values()):
        role = {"prompt": "user", "chosen": "assistant", "rejected": "assistant"}
        values = {k: _messages([{"role": role[k], "content": v}] if isinstance(v, str) else v, k)
                  for k, v in values.items()}
        for k in ("chosen", "rejected"):
            if values[k][-1]["role"] != "assistant":
                raise BadRow(f"{k}_not_assistant")
    else:
        for k, v in values.items():
            if not v.strip():
                raise BadRow(f"empty_{k}")
    rid = row.get("id")
    return Pair(values["prompt"], values["chosen"], values["rejected"], None if rid is None else str(rid), path, line)


def read_pairs(spec: str | Path, errors: RowErrors | None = None) -> list[Pair]:
    """Every good row of a preference file (or of every JSONL/Parquet file under a directory);
    bad rows are counted in `errors` with file:line."""
    errors = errors if errors is not None else RowErrors()
    pairs = []
    for path in data_files(spec):
        for line, row, reason in iter_rows(path):
            if reason is None:
                try:
                    pairs.append(parse_pair(row, str(path), line))
                    continue
                except BadRow as e:
                    reason = e.reason
            errors.add(reason, path, line)
    return pairs


def tokenize_pair(tokenizer, pair: Pair) -> TokenizedPair:
    if pair.conversational:
        prompt = render(tokenizer, pair.prompt, add_generation_prompt=True)[0]
        full_w = render(tokenizer, pair.prompt + pair.chosen)[0]
        full_l = render(tokenizer, pair.prompt + pair.rejected)[0]
    else:
        eos = tokenizer.eos_token or ""

        def ids(text: str) -> list[int]:
            return tokenizer(text)["input_ids"]

        prompt = ids(pair.prompt)
        full_w = ids(pair.prompt + (pair.chosen if pair.chosen.endswith(eos) else pair.chosen + eos))
        full_l = ids(pair.prompt + (pair.rejected if pair.rejected.endswith(eos) else pair.rejected + eos))
    # the longest token prefix the prompt shares with both replies (commonprefix is element-wise on any sequences)
    n = min(len(os.path.commonprefix([prompt, full_w])), len(os.path.commonprefix([prompt, full_l])))
    return TokenizedPair(list(prompt[:n]), list(full_w[n:]), list(full_l[n:]), pair.id)


def tokenize_pairs(tokenizer, pairs: Sequence[Pair], max_length: int,
                   errors: RowErrors | None = None) -> list[TokenizedPair]:
    """Tokenize; drop (and count) pairs whose prompt fills max_length or whose completion is empty."""
    out = []
    for p in pairs:
        t = tokenize_pair(tokenizer, p)
        if len(t.prompt) >= max_length:
            if errors is not None:
                errors.add("prompt_too_long", p.path, p.line)
            continue
        if not t.chosen or not t.rejected:
            if errors is not None:
                errors.add("empty_completion", p.path, p.line)
            continue
        out.append(t)
    return out


def collate(pairs: Sequence[TokenizedPair], max_length: int, pad_id: int,
            ref_logps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """B pairs → 2B right-padded rows (chosen first), labels −100 outside the completion; each row
    is cut to max_length keeping its start (TRL's keep_start)."""
    seqs = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    plens = [len(p.prompt) for p in pairs] * 2
    T = min(max_length, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), T), IGNORE, dtype=torch.long)
    for i, (s, pl) in enumerate(zip(seqs, plens)):
        s = s[:T]
        ids[i, :len(s)] = torch.tensor(s)
        labels[i, pl:len(s)] = ids[i, pl:len(s)]
    batch = {"input_ids": ids, "labels": labels}
    if ref_logps is not None:
        batch["ref_logps"] = ref_logps
    return batch


class PreferenceData:
    """The trainer's data source: shuffled epochs over the pairs, each rank its own disjoint share
    (a per-epoch permutation, identical on all ranks, dealt round-robin). State: epoch and
    position, so a resumed run draws exactly the batches the uninterrupted one would have."""

    def __init__(self, pairs: Sequence[TokenizedPair], max_length: int, pad_id: int,
                 ref_logps: torch.Tensor | None = None, seed: int = 0, rank: int = 0, world: int = 1,
                 shuffle: bool = True):
        if len(pairs) < world:
            raise ValueError(f"{len(pairs)} preference pairs cannot be shared by {world} ranks")
        self.pairs, self.max_length, self.pad_id, self.ref = list(pairs), max_length, pad_id, ref_logps
        self.seed, self.rank, self.world, self.shuffle = seed, rank, world, shuffle
        self.per_rank = len(self.pairs) // world  # the tail of an epoch that does not divide is skipped
        self.epoch, self.pos = 0, 0

    def __len__(self) -> int:
        return len(self.pairs)

    def _order(self, epoch: int) -> np.ndarray:
        n = len(self.pairs)
        perm = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        return perm[: self.per_rank * self.world][self.rank::self.world]

    def batch_of(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        ref = None
        if self.ref is not None:
            ix = torch.as_tensor(list(idx), dtype=torch.long)
            ref = torch.cat([self.ref[ix, 0], self.ref[ix, 1]])
        return collate([self.pairs[i] for i in idx], self.max_length, self.pad_id, ref)

    def next_batch(self, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        b = batch_size or 1
        idx: list[int] = []
        while len(idx) < b:
            order = self._order(self.epoch)
            take = order[self.pos:self.pos + b - len(idx)].tolist()
            idx += take
            self.pos += len(take)
            if self.pos >= len(order):
                self.epoch, self.pos = self.epoch + 1, 0
        return self.batch_of(idx)

    def batches(self, batch_size: int = 8):
        """This rank's share of the pairs once, in file order (validation: the same batches every
        call). Every rank gets the same number of pairs and so of forwards (FSDP runs ranks in
        step); the last `len % world` pairs are left out."""
        mine = list(range(self.per_rank * self.world))[self.rank::self.world]
        for i in range(0, len(mine), batch_size):
            yield self.batch_of(mine[i:i + batch_size])

    def set_phase(self, phase) -> None:
        pass

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "n": len(self.pairs)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("n", len(self.pairs)) != len(self.pairs):
            raise ValueError(f"the checkpoint was trained on {state['n']} pairs, the data now holds "
                             f"{len(self.pairs)}; resume with the same data")
        self.epoch, self.pos = state["epoch"], state["pos"]


__all__ = ["Pair", "TokenizedPair", "parse_pair", "read_pairs", "extract_prompt", "tokenize_pair", "tokenize_pairs",
           "collate", "PreferenceData"]
