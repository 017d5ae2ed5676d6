"""SFT data: chat rows → token ids with a trained-token mask, packed or padded, resumable.

Rows (OpenAI `messages`, TRL `prompt`/`completion`, Alpaca `instruction`/`input`/`output`; JSONL or
Parquet) are normalised and rendered by kollm.data.chat: the tokenizer's chat template (BOS once,
from the template: no second BOS is ever added), `trained` True on assistant content and the
end-of-turn token after it (the loss is on responses only, Trillion §4 / Tulu 3). A bad row is
counted by reason with file:line and skipped; with `min_score`, rows an LLM judge scored below it
(`kollm data judge --rubric sft`; Trillion keeps scores above 3, i.e. min_score 4) are dropped.

Batches have the trainer's layout (kollm.data.loader): `input_ids`, `labels` (the id where trained,
−100 elsewhere; the loss shifts), `doc_ids` (0, 1, ... per conversation in a row, −1 on padding).

- packed: conversations are bin-packed into rows of `seq_len` by best-fit decreasing (TRL's "bfd":
  no conversation is split), trained under the `document` mask with positions restarting per
  conversation, so a conversation's logits do not depend on what else shares its row.
- padded: one conversation per row, padded to the longest of the batch (a multiple of 8).

A conversation longer than `seq_len` keeps its first `seq_len` tokens (counted); one left with no
trained token is dropped (counted). Epoch e's order is a permutation seeded by (seed, e), packed
once for all ranks; the global stream of rows is dealt to ranks step by step (rank r takes the
r-th slice of each draw), so any world size sees the same global batches as one process and the
state is two integers (epoch, cursor).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from kollm.data import IGNORE, chat
from kollm.data.documents import resolve_inputs

STATE_VERSION = 1


def resolve_paths(spec: str | list[str]) -> list[str]:
    """`a.jsonl,b.parquet`, a directory (recursively) or a glob → sorted list of files."""
    specs = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    if not specs:
        raise ValueError("no SFT data given")
    return resolve_inputs(specs)


@dataclass
class Conversations:
    """All rendered conversations, concatenated: ids[offsets[i]:offsets[i+1]] is conversation i."""

    ids: np.ndarray  # int32
    trained: np.ndarray  # bool
    offsets: np.ndarray  # int64, len = n + 1
    sources: list[str]  # file:line of each conversation
    errors: chat.RowErrors
    filtered: int = 0  # rows below min_score (a choice, not an error)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def get(self, i: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
        a = self.offsets[i]
        b = min(self.offsets[i + 1], a + seq_len)
        return self.ids[a:b], self.trained[a:b]


def load_conversations(paths: list[str], tokenizer, min_score: float | None = None,
                       score_key: str = "score") -> Conversations:
    ids, trained, offsets, sources = [], [], [0], []
    errors, filtered = chat.RowErrors(), 0
    for path in paths:
        for line, row, reason in chat.iter_rows(path):
            if row is None:
                errors.add(reason, path, line)
                continue
            if min_score is not None:
                score = row.get(score_key)
                if not isinstance(score, int | float) or isinstance(score, bool):
                    errors.add(f"no_{score_key}", path, line)
                    continue
                if score < min_score:
                    filtered += 1
                    continue
            try:
                conv_ids, conv_trained = chat.render(tokenizer, chat.to_messages(row))
            except chat.BadRow as e:
                errors.add(e.reason, path, line)
                continue
            ids.append(np.asarray(conv_ids, dtype=np.int32))
            trained.append(np.asarray(conv_trained, dtype=bool))
            offsets.append(offsets[-1] + len(conv_ids))
            sources.append(f"{path}:{line}")
    cat = (lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt))  # noqa: E731
    return Conversations(cat(ids, np.int32), cat(trained, bool), np.asarray(offsets, dtype=np.int64), sources,
                         errors, filtered)


def best_fit_decreasing(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Bins of item indices, each summing to <= capacity; longest first, each into the fullest bin
    it fits (TRL's "bfd"). Ties keep index order, so the result is a function of the input."""
    order = np.argsort(-lengths, kind="stable")
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, bin index), sorted
    for i in order.tolist():
        n = int(lengths[i])
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            space, b = free.pop(k)
            bins[b].append(i)
            if space - n > 0:
                bisect.insort(free, (space - n, b))
        else:
            bins.append([i])
            if capacity - n > 0:
                bisect.insort(free, (capacity - n, len(bins) - 1))
    return bins


def build_rows(convs: Conversations, order: np.ndarray, seq_len: int, packing: bool) -> list[list[int]]:
    """Rows of conversation indices for one pass over `order`."""
    if not packing:
        return [[int(i)] for i in order]
    lengths = np.minimum(convs.lengths()[order], seq_len)
    return [[int(order[j]) for j in b] for b in best_fit_decreasing(lengths, seq_len)]


def collate(convs: Conversations, rows: list[list[int]], seq_len: int, packing: bool,
            pad_id: int = 0) -> dict[str, torch.Tensor]:
    """(B, T) batch; T = seq_len packed, the longest row rounded up to 8 padded."""
    if packing:
        T = seq_len
    else:
        longest = max((min(int(convs.lengths()[r[0]]), seq_len) for r in rows if r), default=1)
        T = min(seq_len, 8 * math.ceil(longest / 8))
    B = len(rows)
    input_ids = np.full((B, T), pad_id, dtype=np.int64)
    labels = np.full((B, T), IGNORE, dtype=np.int64)
    doc_ids = np.full((B, T), -1, dtype=np.int64)
    for b, row in enumerate(rows):
        pos = 0
        for d, i in enumerate(row):
            ids, trained = convs.get(i, seq_len)
            n = len(ids)
            input_ids[b, pos:pos + n] = ids
            labels[b, pos:pos + n] = np.where(trained, ids, IGNORE)
            doc_ids[b, pos:pos + n] = d
            pos += n
    return {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels),
            "doc_ids": torch.from_numpy(doc_ids)}


def _pad_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, attr, None)
        if isinstance(v, int):
            return v
    return 0


def _summary(convs: Conversations, seq_len: int) -> dict:
    lengths = convs.lengths()
    long = lengths > seq_len
    # A conversation cut before its first trained token has nothing left to learn from.
    first_trained = np.array([int(np.argmax(convs.trained[a:b])) for a, b in
                              zip(convs.offsets[:-1][long], convs.offsets[1:][long])], dtype=np.int64)
    return {"conversations": len(convs), "tokens": int(lengths.sum()), "trained_tokens": int(convs.trained.sum()),
            "truncated": int(long.sum()), "truncated_no_response": int((first_trained >= seq_len).sum()),
            "bad_rows": convs.errors.total,
            "below_min_score": convs.filtered}


class SFTData:
    """The trainer's data source for SFT (kollm.train.trainer.DataSource)."""

    def __init__(self, paths: str | list[str], tokenizer, seed: int = 0, rank: int = 0, world_size: int = 1,
                 packing: bool = True, min_score: float | None = None, score_key: str = "score",
                 convs: Conversations | None = None):
        self.paths = resolve_paths(paths) if convs is None else []
        self.convs = convs if convs is not None else load_conversations(self.paths, tokenizer, min_score, score_key)
        if len(self.convs) == 0:
            raise ValueError(f"{paths}: no usable SFT conversations ({self.convs.errors.summary() or 'no rows'})")
        self.row_errors = self.convs.errors  # the trainer reports them (bad_rows.json, end of the run)
        self.seed, self.rank, self.world, self.packing = seed, rank, world_size, packing
        self.pad_id = _pad_id(tokenizer)
        self.seq_len: int | None = None
        self.epoch, self.cursor = 0, 0
        self._rows: list[list[int]] | None = None  # epoch self.epoch's rows, built lazily

    # -- the trainer's protocol --------------------------------------------------------------------
    def set_phase(self, phase) -> None:
        """Only the phase's seq_len matters here (the context conversations are packed into)."""
        if phase.seq_len != self.seq_len:
            self.seq_len = phase.seq_len
            self._rows = None
        self.batch_size = phase.batch_size

    def summary(self) -> dict:
        return _summary(self.convs, self.seq_len or 2**62)

    def epoch_rows(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.convs))
        lengths = self.convs.lengths()
        # drop conversations whose trained tokens all lie past the cut
        keep = [i for i in order if self.convs.trained[self.convs.offsets[i]:self.convs.offsets[i] +
                                                       min(int(lengths[i]), self.seq_len)].any()]
        rows = build_rows(self.convs, np.asarray(keep, dtype=np.int64), self.seq_len, self.packing)
        perm = rng.permutation(len(rows))  # BFD sorts by length: shuffle the rows it made
        return [rows[j] for j in perm]

    def _take(self, n: int) -> list[list[int]]:
        out: list[list[int]] = []
        while len(out) < n:
            if self._rows is None:
                self._rows = self.epoch_rows(self.epoch)
            if self.cursor >= len(self._rows):
                self.epoch, self.cursor, self._rows = self.epoch + 1, 0, None
                continue
            k = min(n - len(out), len(self._rows) - self.cursor)
            out += self._rows[self.cursor:self.cursor + k]
            self.cursor += k
        return out

    def next_batch(self, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        if self.seq_len is None:
            raise RuntimeError("SFTData: set_phase() first (it sets seq_len)")
        b = batch_size or self.batch_size
        rows = self._take(b * self.world)[self.rank * b:(self.rank + 1) * b]
        return collate(self.convs, rows, self.seq_len, self.packing, self.pad_id)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "epoch": self.epoch, "cursor": self.cursor, "seq_len": self.seq_len,
                "seed": self.seed, "packing": self.packing, "conversations": len(self.convs)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"SFT data state: version {state.get('version')!r}, this kollm reads {STATE_VERSION}")
        if state["conversations"] != len(self.convs):
            raise ValueError(f"SFT data state: the checkpoint saw {state['conversations']} conversations, the data "
                             f"now has {len(self.convs)}; resume with the same data.train and tokenizer")
        self.epoch, self.cursor, self.seq_len = state["epoch"], state["cursor"], state["seq_len"]
        self._rows = None


class SFTValidation:
    """Validation conversations packed (or padded) the same way, in file order; `batches()` is
    finite and the same on every call. Each rank yields its slice of every global batch; rows
    with nothing in them fill the last one so that every rank yields the same number of batches."""

    def __init__(self, paths: str | list[str], tokenizer, seq_len: int, batch_size: int, rank: int = 0,
                 world_size: int = 1, packing: bool = True, convs: Conversations | None = None):
        self.convs = convs if convs is not None else load_conversations(resolve_paths(paths), tokenizer)
        if len(self.convs) == 0:
            raise ValueError(f"{paths}: no usable validation conversations ({self.convs.errors.summary()})")
        self.row_errors = self.convs.errors
        self.seq_len, self.batch_size, self.rank, self.world, self.packing = \
            seq_len, batch_size, rank, world_size, packing
        self.pad_id = _pad_id(tokenizer)
        self.rows = build_rows(self.convs, np.arange(len(self.convs)), seq_len, packing)

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        b, g = self.batch_size, self.batch_size * self.world
        for start in range(0, len(self.rows), g):
            rows = self.rows[start:start + g]
            rows = (rows + [[]] * (g - len(rows)))[self.rank * b:(self.rank + 1) * b]
            yield collate(self.convs, rows, self.seq_len, self.packing, self.pad_id)


__all__ = ["SFTData", "SFTValidation", "Conversations", "load_conversations", "best_fit_decreasing", "build_rows",
           "collate", "resolve_paths", "IGNORE"]
