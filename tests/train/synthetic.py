"""A tiny stateful data source for trainer tests: the protocol of kollm.data.loader.PretrainLoader
(`next_batch(batch_size)`, `set_phase`, `state_dict`, `load_state_dict`) over generated sequences.

Sequence i of the whole run is a pure function of (seed, i); rank r of W takes i = k·W + r, so a
step's global set of sequences is the same for any world size: what the dist tests need to compare
a 2-rank run with a single process.
"""

from __future__ import annotations

import numpy as np
import torch


def sequence(seed: int, i: int, seq_len: int, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, i])
    # Learnable: arithmetic runs with a random start and stride per document.
    cuts = np.sort(rng.choice(np.arange(4, seq_len - 4), size=2, replace=False))
    bounds = [0, *cuts.tolist(), seq_len]
    tokens, docs, langs = [], [], []
    for d, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        start, stride = rng.integers(0, vocab), rng.integers(1, 5)
        tokens.append((start + stride * np.arange(b - a)) % vocab)
        docs.append(np.full(b - a, d))
        langs.append(np.full(b - a, d % 2))
    return {"input_ids": np.concatenate(tokens), "doc_ids": np.concatenate(docs), "lang_ids": np.concatenate(langs)}


class SyntheticLoader:
    def __init__(self, seed: int = 0, seq_len: int = 32, vocab: int = 512, rank: int = 0, world_size: int = 1):
        self.seed, self.seq_len, self.vocab, self.rank, self.world = seed, seq_len, vocab, rank, world_size
        self.pos = 0  # sequences this rank has taken
        self.phases: list[str] = []

    def set_phase(self, phase) -> None:
        self.seq_len = phase.seq_len
        self.phases.append(phase.name)

    def next_batch(self, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        n = batch_size or 2
        rows = [sequence(self.seed, (self.pos + k) * self.world + self.rank, self.seq_len, self.vocab) for k in range(n)]
        self.pos += n
        out = {k: torch.from_numpy(np.stack([r[k] for r in rows]).astype(np.int64)) for k in rows[0]}
        out["labels"] = out["input_ids"].clone()
        return out

    def state_dict(self) -> dict:
        return {"pos": self.pos, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        self.pos, self.seq_len = state["pos"], state["seq_len"]
