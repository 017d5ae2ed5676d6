"""XLDA packing (Trillion 7B §2.1): fixed-length sequences of documents with per-token doc and
language ids, in two readings of the report's mixing probability ρ (docs/design.md quotes it):

  * `literal` (the report as written, default of the Trillion recipes): *every* sequence holds at
    least one English (anchor) span and at least one non-English span, and ρ is the probability
    that the next span switches language. Documents are cut into contiguous spans where a budget
    ends, so the constraint holds at any mixture (8.5 : 1 : 0.5 included) and the shares still
    hold over the run.
  * `fraction` (kollm's earlier reading, kept as a named option): a fraction ρ of the sequences
    is cross-lingual (one anchor span + one non-English span), the rest hold one language.

Every language is a stream: its documents in a shuffled order (blocks of documents shuffled, then
the documents inside a block, as MosaicML streaming's block shuffles do, so memory stays
O(blocks) for any corpus size), this rank's share only, read token by token across sequences. A
document cut at a sequence end (or a span budget) continues in the next sequence that draws on its
language; nothing is dropped or repeated within an epoch. Ranks take turns over each epoch's
eligible documents, so their shares are disjoint and balanced.

Per sequence (all decisions reproducible from the seed and a few counters):
  * long or short pool (long-context phases: documents longer than `short_max_len` vs the rest)
    and, in `fraction` mode, cross-lingual or not: exactly round(rate·W) of every window of W
    sequences, at random positions inside the window, so the realised fraction tracks the rate
    without binomial noise;
  * which language: the one furthest behind its target token share (Megatron-LM's
    BlendedDataset rule), so language shares track P(l) within one sequence at every step;
  * a cross-lingual sequence has k anchor (English) tokens and T − k of the non-English language
    furthest behind, k − 1 ~ Binomial(T − 2, f), f ~ Beta(c·p, c·(1 − p)) with p the anchor's
    target share: varied split points, both spans non-empty, mean share p. In `literal` mode
    every sequence is cross-lingual, so k is also steered by the anchor's running deficit (the
    draw's deviation from its mean keeps the split points varied).
  * `fraction`: which span comes first is a coin flip. `literal`: the first span's language is a
    coin flip; after each document piece the next span switches language with probability ρ
    while both budgets last (a spent budget forces the switch), so ρ = 0 gives two blocks
    [anchor][other] and ρ = 1 alternates at every document boundary.
`fraction` with ρ = 0 is plain greedy packing: every sequence is filled from one language's stream.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from kollm.data.mixture import check_distribution
from kollm.data.shards import LanguageCorpus

WINDOW = 100  # sequences per quota window (cross-lingual / long-pool fractions exact per window)
SPLIT_CONCENTRATION = 4.0  # Beta concentration of the anchor share in a cross-lingual sequence


@dataclass(frozen=True)
class PackSpec:
    """What one phase asks of the packer (the loader builds it from a PhaseData)."""

    probs: Mapping[str, float]  # target token share per language (mixture.language_probs)
    seq_len: int
    rho: float = 0.0  # literal: P(next span switches language); fraction: share of cross-lingual sequences
    anchor: str = "en"  # the language every cross-lingual sequence contains
    # drop documents scored below; one value for all languages or per language; unknown scores kept
    quality_threshold: float | Mapping[str, float | None] | None = None
    long_fraction: float = 0.0  # token share from documents longer than short_max_len (0: no split)
    short_max_len: int = 4096
    mode: str = "fraction"  # "literal" | "fraction" (module docstring)


MODES = ("literal", "fraction")


def stream_key(lang: str, pool: str, threshold: float | None, short_max: int) -> str:
    """Streams differ by language and by which documents are eligible; the key also salts the shuffle."""
    return f"{lang}/{pool}/q={threshold}" + (f"/max={short_max}" if pool != "all" else "")


def _window_quota(rate: float, w: int) -> int:
    """How many of window w's sequences are selected, so that the first n·W hold round(rate·n·W)."""
    return math.floor(rate * WINDOW * (w + 1) + 0.5) - math.floor(rate * WINDOW * w + 0.5)


class _Stream:
    """One language (and pool) as a token stream over this rank's share of its documents."""

    def __init__(self, corpus: LanguageCorpus, pool: str, threshold: float | None, short_max: int,
                 seed: int, rank: int, world_size: int, block_size: int):
        self.corpus, self.pool, self.threshold, self.short_max = corpus, pool, threshold, short_max
        self.key = stream_key(corpus.lang, pool, threshold, short_max)
        self.seed, self.salt, self.rank, self.world = seed, zlib.crc32(self.key.encode()), rank, world_size
        self.block_size = block_size
        self.nblocks = max(1, -(-corpus.num_docs // block_size))
        # the state: next unread token (epoch, block in the epoch's order, this rank's document in the
        # block, token in the document) and how many eligible documents earlier blocks dealt out
        self.epoch = self.block = self.doc = self.offset = self.dealt = 0
        self._perm_epoch = -1
        self._docs: np.ndarray | None = None

    def _eligible(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """(keep mask, lengths) of documents lo..hi-1."""
        lens = self.corpus.lens(lo, hi)
        keep = lens > 0
        if self.threshold is not None:
            keep &= ~(self.corpus.quality(lo, hi) < self.threshold)  # NaN (unknown) is kept
        if self.pool == "long":
            keep &= lens > self.short_max
        elif self.pool == "short":
            keep &= lens <= self.short_max
        return keep, lens

    def _load_block(self) -> None:
        # Ranks take turns over the epoch's eligible documents (round-robin continuing across blocks
        # and epochs), so shares are balanced and disjoint whatever the block size or filter.
        before, loads = self.dealt, 0
        while True:
            if self.block >= self.nblocks:
                self.epoch, self.block = self.epoch + 1, 0
            if self._perm_epoch != self.epoch:
                self._perm = np.random.default_rng([self.seed, self.salt, self.epoch]).permutation(self.nblocks)
                self._perm_epoch = self.epoch
            b = int(self._perm[self.block])
            lo, hi = b * self.block_size, min((b + 1) * self.block_size, self.corpus.num_docs)
            order = np.random.default_rng([self.seed, self.salt, self.epoch, b]).permutation(hi - lo)
            keep, lens = self._eligible(lo, hi)
            order = order[keep[order]]
            mine = order[(self.rank - self.dealt) % self.world::self.world]
            if mine.size:
                self._docs, self._lens, self._n_block = mine + lo, lens[mine], order.size
                return
            self.block, self.doc, self.offset, self.dealt = self.block + 1, 0, 0, self.dealt + order.size
            loads += 1
            if loads > self.nblocks and self.dealt == before:  # a whole epoch without one document
                raise ValueError(
                    f"no {self.corpus.lang!r} documents for stream {self.key} (quality threshold "
                    f"{self.threshold}, pool {self.pool}, short_max_len {self.short_max}); "
                    "lower the threshold, give the language probability 0, or add data"
                )

    def read_into(self, out: np.ndarray, pos: int, n: int) -> list[int]:
        """Write the next n tokens to out[pos:pos+n]; returns the lengths of the document pieces."""
        pieces = []
        while n > 0:
            if self._docs is None:
                self._load_block()
            length = int(self._lens[self.doc])
            take = min(length - self.offset, n)
            out[pos:pos + take] = self.corpus.doc(int(self._docs[self.doc]))[self.offset:self.offset + take]
            pieces.append(take)
            pos, n, self.offset = pos + take, n - take, self.offset + take
            if self.offset == length:
                self.doc, self.offset = self.doc + 1, 0
                if self.doc == len(self._docs):
                    self.dealt += self._n_block
                    self.block, self.doc, self._docs = self.block + 1, 0, None
        return pieces

    def read_piece(self, out: np.ndarray, pos: int, n: int) -> int:
        """Write at most n tokens of the current document to out[pos:]; returns how many (≥ 1)."""
        if self._docs is None:
            self._load_block()
        return self.read_into(out, pos, min(n, int(self._lens[self.doc]) - self.offset))[0]

    def state(self) -> dict:
        return {"lang": self.corpus.lang, "pool": self.pool, "quality_threshold": self.threshold,
                "short_max_len": self.short_max,
                "pos": [self.epoch, self.block, self.doc, self.offset, self.dealt]}


class XLDAPacker:
    """Packs one rank's stream of sequences. `configure(spec)` starts a phase; `pack(n)` returns
    (n, seq_len) int64 arrays `tokens`, `doc_ids` (0, 1, ... per sequence, one per document
    piece) and `lang_ids` (indices into `self.langs`)."""

    def __init__(self, corpora: Mapping[str, LanguageCorpus], seed: int = 0, rank: int = 0,
                 world_size: int = 1, block_size: int = 4096):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if block_size < 1:
            raise ValueError(f"block_size must be ≥ 1, got {block_size}")
        self.corpora = dict(corpora)
        self.langs = sorted(self.corpora)
        self.seed, self.rank, self.world_size, self.block_size = seed, rank, world_size, block_size
        self.rng = np.random.default_rng([seed, rank])
        self.streams: dict[str, _Stream] = {}
        self.spec: PackSpec | None = None
        self._windows: dict[tuple[str, int], np.ndarray] = {}

    # -- phase -------------------------------------------------------------------------------------
    def configure(self, spec: PackSpec) -> None:
        """Start a phase: new targets, counters from zero; streams continue where they were."""
        probs = dict(spec.probs)
        check_distribution(probs, set(self.langs), "language probabilities")
        if spec.seq_len < 2:
            raise ValueError(f"seq_len must be ≥ 2, got {spec.seq_len}")
        for name, v in (("rho", spec.rho), ("long_fraction", spec.long_fraction)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} = {v!r}: must lie in [0, 1]")
        if spec.short_max_len < 1:
            raise ValueError(f"short_max_len must be ≥ 1, got {spec.short_max_len}")
        if spec.mode not in MODES:
            raise ValueError(f"xlda mode {spec.mode!r}: choose one of {', '.join(MODES)}")
        if spec.mode == "literal":
            p = probs.get(spec.anchor, 0.0)
            if spec.anchor not in self.langs or not 0 < p < 1:
                raise ValueError(f"literal XLDA packing puts an {spec.anchor!r} span and a non-{spec.anchor!r} span "
                                 f"in every sequence: it needs 0 < P({spec.anchor}) < 1, got {p:.4g}")
        elif spec.rho > 0:
            p = probs.get(spec.anchor, 0.0)
            if spec.anchor not in self.langs or p == 0:
                raise ValueError(f"rho > 0 needs the anchor language {spec.anchor!r} with probability > 0")
            if not any(v > 0 for lang, v in probs.items() if lang != spec.anchor):
                raise ValueError(f"rho > 0 needs a language other than {spec.anchor!r} with probability > 0")
            # expected anchor share of a cross-lingual sequence; the rest must fit the targets
            m = ((spec.seq_len - 2) * p + 1) / spec.seq_len
            if spec.rho * m > p + 1e-9 or spec.rho * (1 - m) > 1 - p + 1e-9:
                raise ValueError(
                    f"rho = {spec.rho} is infeasible with anchor share {p:.4g} at seq_len {spec.seq_len}: "
                    f"cross-lingual sequences alone would give the anchor {spec.rho * m:.4g} and the other "
                    f"languages {spec.rho * (1 - m):.4g} of all tokens"
                )
        self.spec = PackSpec(probs, spec.seq_len, spec.rho, spec.anchor, spec.quality_threshold,
                             spec.long_fraction, spec.short_max_len, spec.mode)
        self._p = np.array([probs.get(lang, 0.0) for lang in self.langs])
        self._anchor = self.langs.index(spec.anchor) if spec.anchor in self.langs else -1
        self.n_seq = self.n_cross = self.n_long = 0
        self.n_choices = self.n_switches = 0  # literal: free switch decisions, and how many switched
        self.lang_tokens = np.zeros(len(self.langs), np.int64)

    def _stream(self, lang: str, pool: str, threshold: float | None, short_max: int) -> _Stream:
        key = stream_key(lang, pool, threshold, short_max)
        if key not in self.streams:
            self.streams[key] = _Stream(self.corpora[lang], pool, threshold, short_max, self.seed, self.rank,
                                        self.world_size, self.block_size)
        return self.streams[key]

    def _selected(self, what: str, rate: float) -> bool:
        """Whether sequence n_seq is one of the `rate` fraction (exact per window, random within)."""
        if rate <= 0:
            return False
        w, j = divmod(self.n_seq, WINDOW)
        perm = self._windows.get((what, w))
        if perm is None:
            salt = zlib.crc32(what.encode())
            perm = np.random.default_rng([self.seed, self.rank, salt, w]).permutation(WINDOW)
            self._windows = {k: v for k, v in self._windows.items() if k[1] >= w}  # drop old windows
            self._windows[(what, w)] = perm
        return bool(perm[j] < _window_quota(rate, w))

    def _behind(self, allowed: np.ndarray) -> int:
        """Language furthest behind its target share after one more sequence (ties: first)."""
        deficit = self._p * (self.lang_tokens.sum() + self.spec.seq_len) - self.lang_tokens
        deficit[~allowed] = -np.inf
        return int(np.argmax(deficit))

    # -- packing -----------------------------------------------------------------------------------
    def _lang_stream(self, lang: int, pool: str) -> _Stream:
        threshold = self.spec.quality_threshold
        if isinstance(threshold, Mapping):
            threshold = threshold.get(self.langs[lang])
        return self._stream(self.langs[lang], pool, threshold, self.spec.short_max_len)

    def _split(self, steer: bool) -> int:
        """Anchor tokens k ∈ [1, T − 1] of a cross-lingual sequence (module docstring)."""
        T, p = self.spec.seq_len, self._p[self._anchor]
        f = self.rng.beta(SPLIT_CONCENTRATION * p, SPLIT_CONCENTRATION * (1 - p))
        k = 1 + int(self.rng.binomial(T - 2, f))
        if steer:  # make up the anchor's deficit; the draw's deviation from its mean keeps the variety
            deficit = p * (self.lang_tokens.sum() + T) - self.lang_tokens[self._anchor]
            k = int(np.clip(round(deficit + k - (1 + (T - 2) * p)), 1, T - 1))
        return k

    def _fill_literal(self, row: int, out: dict[str, np.ndarray], pool: str) -> None:
        T = self.spec.seq_len
        other = self._behind((self._p > 0) & (np.arange(len(self.langs)) != self._anchor))
        k = self._split(steer=True)
        budget = {self._anchor: k, other: T - k}
        cur = self._anchor if self.rng.random() < 0.5 else other
        toks, docs, langs = out["tokens"][row], out["doc_ids"][row], out["lang_ids"][row]
        pos = doc = 0
        while pos < T:
            n = self._lang_stream(cur, pool).read_piece(toks, pos, budget[cur])
            langs[pos:pos + n], docs[pos:pos + n] = cur, doc
            pos, doc, budget[cur] = pos + n, doc + 1, budget[cur] - n
            alt = other if cur == self._anchor else self._anchor
            if budget[cur] == 0:
                cur = alt  # spent: the switch is forced (and is not one of ρ's decisions)
            elif budget[alt] > 0:
                self.n_choices += 1
                if self.rng.random() < self.spec.rho:
                    cur, self.n_switches = alt, self.n_switches + 1
        self.lang_tokens[self._anchor] += k
        self.lang_tokens[other] += T - k
        self.n_cross += 1
        self.n_seq += 1

    def _fill(self, row: int, out: dict[str, np.ndarray]) -> None:
        s = self.spec
        T = s.seq_len
        pool = "all"
        if s.long_fraction > 0:
            pool = "long" if self._selected("long", s.long_fraction) else "short"
            self.n_long += pool == "long"
        if s.mode == "literal":
            return self._fill_literal(row, out, pool)
        if s.rho > 0 and self._selected("cross", s.rho):
            other = self._behind((self._p > 0) & (np.arange(len(self.langs)) != self._anchor))
            k = self._split(steer=False)
            plan = [(self._anchor, k), (other, T - k)]
            if self.rng.random() < 0.5:
                plan.reverse()
            self.n_cross += 1
        else:
            plan = [(self._behind(self._p > 0), T)]
        pos, doc = 0, 0
        toks, docs, langs = out["tokens"][row], out["doc_ids"][row], out["lang_ids"][row]
        for lang, n in plan:
            pieces = self._lang_stream(lang, pool).read_into(toks, pos, n)
            langs[pos:pos + n] = lang
            for length in pieces:
                docs[pos:pos + length] = doc
                pos, doc = pos + length, doc + 1
            self.lang_tokens[lang] += n
        self.n_seq += 1

    def pack(self, n: int) -> dict[str, np.ndarray]:
        if self.spec is None:
            raise ValueError("XLDAPacker.configure(spec) must be called before pack()")
        out = {k: np.empty((n, self.spec.seq_len), np.int64) for k in ("tokens", "doc_ids", "lang_ids")}
        for row in range(n):
            self._fill(row, out)
        return out

    # -- state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """JSON-serialisable: counters, stream positions and the numpy bit-generator state."""
        return {
            "seed": self.seed, "rank": self.rank, "world_size": self.world_size, "block_size": self.block_size,
            "corpus_docs": {lang: self.corpora[lang].num_docs for lang in self.langs},
            "n_seq": self.n_seq, "n_cross": self.n_cross, "n_long": self.n_long,
            "n_choices": self.n_choices, "n_switches": self.n_switches,
            "lang_tokens": {lang: int(n) for lang, n in zip(self.langs, self.lang_tokens)},
            "streams": {k: s.state() for k, s in self.streams.items()},
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore after `configure` with the same phase."""
        if self.spec is None:
            raise ValueError("configure the packer with the checkpoint's phase before load_state_dict")
        for key in ("seed", "rank", "world_size", "block_size"):
            if state[key] != getattr(self, key):
                raise ValueError(f"data state: {key} is {state[key]} in the checkpoint, {getattr(self, key)} now")
        now = {lang: self.corpora[lang].num_docs for lang in self.langs}
        if state["corpus_docs"] != now:
            raise ValueError(f"data state: the checkpoint's corpus {state['corpus_docs']} differs from the shards {now}")
        self.n_seq, self.n_cross, self.n_long = state["n_seq"], state["n_cross"], state["n_long"]
        self.n_choices, self.n_switches = state.get("n_choices", 0), state.get("n_switches", 0)
        self.lang_tokens = np.array([state["lang_tokens"][lang] for lang in self.langs], np.int64)
        self.streams = {}
        for st in state["streams"].values():  # every stream so far, earlier phases' too
            stream = self._stream(st["lang"], st["pool"], st["quality_threshold"], st["short_max_len"])
            stream.epoch, stream.block, stream.doc, stream.offset, stream.dealt = (int(x) for x in st["pos"])
        self.rng.bit_generator.state = state["rng"]
        self._windows = {}
