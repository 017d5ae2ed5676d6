"""Stateful, data-parallel, resumable pretraining loader over token shards (torchtitan's
stateful-dataloader protocol: `state_dict()` / `load_state_dict()` saved with the checkpoint).

Batches are dicts of int64 tensors of shape (B, T): `input_ids`, `labels` (= input_ids, −100 on
padding; the loss shifts), `doc_ids` (per sequence 0, 1, ...; < 0 would be padding) and
`lang_ids` (indices into `loader.langs`). Each rank packs its own disjoint share of every
language's documents (see xlda.py), so ranks never see the same document in an epoch and no rank
packs sequences it throws away.

The trainer switches phase at a step with `set_phase(PhaseData(...))` (stable → anneal →
long-context: mixture, sequence length, quality threshold, long/short split). The state is a few
integers per stream, the phase and the numpy bit-generator state, all JSON-serialisable; restoring
it reproduces exactly the batches an uninterrupted run would have produced, per rank.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kollm.data import IGNORE
from kollm.data.mixture import language_probs
from kollm.data.shards import LanguageCorpus, ShardReader, open_shards
from kollm.data.xlda import PackSpec, XLDAPacker

STATE_VERSION = 1


@dataclass
class PhaseData:
    """The data side of one training phase. Unknown keys in `from_dict` are errors."""

    name: str = "stable"
    seq_len: int = 4096
    batch_size: int = 8  # sequences per rank per batch
    alpha: float = 1.0  # eq. 2: weight of the corpus-size distribution
    beta: dict[str, float] = field(default_factory=dict)  # eq. 2: upsampling distribution
    # XLDA (kollm.data.xlda): "literal" = every sequence holds an anchor span and a non-anchor span,
    # rho = P(the next span switches language); "fraction" = rho is the share of cross-lingual sequences
    packing: str = "fraction"
    rho: float = 0.0
    anchor: str = "en"
    # Quality filter per language, two ways (at most one): an absolute score below which documents
    # are skipped, or the top fraction of each language's scored documents to keep (the report's
    # anneal: top 20 % English, top 10 % others). Either a number for every language or a mapping
    # language -> value with "*" as the default. Documents without a score are always kept.
    quality_threshold: float | dict[str, float] | None = None
    quality_top: float | dict[str, float] | None = None
    long_fraction: float = 0.0  # long-context phases: 0.6 in Trillion (after ProLong)
    short_max_len: int = 4096  # documents up to this length are "short"

    def __post_init__(self) -> None:
        for f in ("seq_len", "batch_size", "short_max_len"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"phase {self.name!r}: {f} must be a positive integer, got {v!r}")
        for f in ("alpha", "rho", "long_fraction"):
            v = getattr(self, f)
            if not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
                raise ValueError(f"phase {self.name!r}: {f} must be a number in [0, 1], got {v!r}")
        for f in ("quality_threshold", "quality_top"):
            v = getattr(self, f)
            values = v.values() if isinstance(v, dict) else [v]
            if v is not None and not all(isinstance(x, int | float) and not isinstance(x, bool) for x in values):
                raise ValueError(f"phase {self.name!r}: {f} must be a number, a mapping language -> number "
                                 f"or null, got {v!r}")
        if self.quality_top is not None:
            if self.quality_threshold is not None:
                raise ValueError(f"phase {self.name!r}: give quality_threshold or quality_top, not both")
            tops = self.quality_top.values() if isinstance(self.quality_top, dict) else [self.quality_top]
            if not all(0 < x <= 1 for x in tops):
                raise ValueError(f"phase {self.name!r}: quality_top fractions must lie in (0, 1], "
                                 f"got {self.quality_top!r}")
        if self.packing not in ("literal", "fraction"):
            raise ValueError(f"phase {self.name!r}: packing must be 'literal' or 'fraction', got {self.packing!r}")
        if not isinstance(self.beta, dict):
            raise ValueError(f"phase {self.name!r}: beta must be a mapping language -> weight, got {self.beta!r}")

    @classmethod
    def from_dict(cls, d: Mapping) -> PhaseData:
        names = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in names:
                raise KeyError(f"phase: unknown key {key!r} (known: {', '.join(sorted(names))})")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class PretrainLoader:
    def __init__(self, shards: str | Path | Mapping[str, list[ShardReader]], phase: PhaseData, seed: int = 0,
                 rank: int = 0, world_size: int = 1, block_size: int = 4096):
        readers = open_shards(shards) if isinstance(shards, str | Path) else shards
        self.corpora = {lang: LanguageCorpus(r) for lang, r in readers.items()}
        self.packer = XLDAPacker(self.corpora, seed=seed, rank=rank, world_size=world_size, block_size=block_size)
        self.langs: list[str] = self.packer.langs
        self.sizes = {lang: c.num_tokens for lang, c in self.corpora.items()}
        self.set_phase(phase)

    def set_phase(self, phase: PhaseData) -> None:
        """Switch mixture / length / filters from the next batch on (streams keep their place).
        Setting the phase already in force changes nothing, so a trainer may set it after a resume."""
        if phase == getattr(self, "phase", None):
            return
        probs = language_probs(self.sizes, phase.alpha, phase.beta or None)
        self.packer.configure(PackSpec(probs, phase.seq_len, phase.rho, phase.anchor, self.thresholds(phase),
                                       phase.long_fraction, phase.short_max_len, phase.packing))
        self.phase = phase
        self.probs = probs

    def thresholds(self, phase: PhaseData) -> dict[str, float | None]:
        """Per-language quality threshold of a phase; `quality_top` becomes the score quantile that
        keeps that fraction of the language's scored documents (the same on every rank)."""
        def per_lang(v, lang):
            if isinstance(v, dict):
                unknown = set(v) - set(self.langs) - {"*"}
                if unknown:
                    raise KeyError(f"phase {phase.name!r}: quality setting for unknown language(s) "
                                   f"{sorted(unknown)} (shards hold {self.langs})")
                return v.get(lang, v.get("*"))
            return v

        out: dict[str, float | None] = {}
        for lang in self.langs:
            out[lang] = per_lang(phase.quality_threshold, lang)
            top = per_lang(phase.quality_top, lang)
            if top is not None and top < 1:
                q = self.corpora[lang].quality(0, self.corpora[lang].num_docs).astype(np.float32)
                q = q[~np.isnan(q)]
                # keep scores >= the (1 - top) quantile; no scores at all: nothing to filter by
                out[lang] = float(np.quantile(q, 1 - top, method="higher")) if q.size else None
        return out

    def next_batch(self, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        """One (B, T) batch; B defaults to the phase's batch_size (a batch-size ramp passes its own).
        B = 0 (a rank with no sequence this micro-step: more ranks than sequences in the step) gives
        one padding row (doc_ids and lang_ids −1, labels −100) and reads nothing, so the rank still runs the
        forward and backward its collectives expect, with no target."""
        if batch_size == 0:
            T = self.phase.seq_len
            pad = torch.full((1, T), -1, dtype=torch.int64)
            return {"input_ids": torch.zeros(1, T, dtype=torch.int64), "labels": torch.full((1, T), IGNORE),
                    "doc_ids": pad, "lang_ids": pad.clone()}
        seqs = self.packer.pack(batch_size or self.phase.batch_size)
        labels = seqs["tokens"].copy()
        labels[seqs["doc_ids"] < 0] = IGNORE
        return {"input_ids": torch.from_numpy(seqs["tokens"]), "labels": torch.from_numpy(labels),
                "doc_ids": torch.from_numpy(seqs["doc_ids"]), "lang_ids": torch.from_numpy(seqs["lang_ids"])}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "phase": self.phase.to_dict(), "packer": self.packer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data state: version {state.get('version')!r}, this kollm reads {STATE_VERSION}")
        self.set_phase(PhaseData.from_dict(state["phase"]))
        self.packer.load_state_dict(state["packer"])


class HeldOutBatches:
    """Validation for pretraining (Trillion §3.3: a held-out multilingual set): `n` batches packed
    once from held-out shards with the same packing as training, returned on every call. Language
    ids are renumbered to the training loader's languages (`langs`), so per-language validation
    losses line up with the training ones; a language training never saw gets -1."""

    def __init__(self, shards: str | Path, phase: PhaseData, n: int, batch_size: int, langs: list[str],
                 rank: int = 0, world_size: int = 1, block_size: int = 4096, seed: int = 1234):
        loader = PretrainLoader(shards, phase, seed=seed, rank=rank, world_size=world_size, block_size=block_size)
        remap = torch.tensor([langs.index(lang) if lang in langs else -1 for lang in loader.langs])
        self._batches = []
        for _ in range(n):
            b = loader.next_batch(batch_size)
            b["lang_ids"] = torch.where(b["lang_ids"] >= 0, remap[b["lang_ids"].clamp(min=0)], b["lang_ids"])
            self._batches.append(b)
        self.max_token_id = max((c.max_token_id for c in loader.corpora.values() if c.max_token_id is not None),
                                default=None)

    def batches(self) -> list[dict[str, torch.Tensor]]:
        return self._batches
