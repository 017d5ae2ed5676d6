"""Exact and MinHash near-duplicate removal on datatrove's MinHash stages.

Datatrove's MinHash (as FineWeb ran it) is three scalable passes: per-task signatures, per-bucket
matching of identical band signatures, and one clustering pass. We keep its first two stages and
change two things:
- Shingles are *character* n-grams of datatrove's simplified text (lowercase, no punctuation,
  numbers → 0), not word n-grams from NLTK/spaCy (downloads; and Korean eojeol n-grams are too
  coarse for short texts). Diacritic folding is off: it NFD-decomposes Hangul into jamo.
- Clustering is ours (`decide_duplicates`): in each cluster the document with the earliest
  `source` ("path:line", line compared as a number) is kept, so the result does not depend on how many tasks ran.
Exact duplicates are found by a 64-bit hash of the normalised text and reported separately.
Defaults (5-gram, 14 bands × 8 rows) are FineWeb's: pairs with Jaccard 0.8 are caught with
p ≈ 0.92, pairs at 0.5 with p ≈ 0.05.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.utils.hashing import HashConfig
from datatrove.utils.text import TextNormConfig, simplify_text
from datatrove.utils.word_tokenizers import WordTokenizer

from kollm.data.documents import source_key


@dataclass
class DedupConfig:
    exact: bool = True
    near: bool = True
    n_grams: int = 5  # characters per shingle
    num_buckets: int = 14
    hashes_per_bucket: int = 8
    seed: int = 1

    def minhash(self) -> MinhashConfig:
        return MinhashConfig(n_grams=self.n_grams, num_buckets=self.num_buckets,
                             hashes_per_bucket=self.hashes_per_bucket, seed=self.seed,
                             norm_config=TextNormConfig(norm_unicode_diacritics=False),
                             hash_config=HashConfig(precision=64, hash_fc="xxhash"))


def text_hash(text: str) -> int:
    """64-bit key for exact dedup (blake2b: stable across processes, unlike hash())."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class CharTokenizer(WordTokenizer):
    """Characters as datatrove 'words', so MinHash shingles are character n-grams."""

    def word_tokenize(self, text: str) -> list[str]:
        return list(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(0, len(text))]


class CharMinhashSignature(MinhashDedupSignature):
    """datatrove's signature stage with character shingles taken by string slicing (2x faster
    than joining character tuples, which is what a character WordTokenizer alone would give)."""

    def get_shingles(self, text: str) -> np.ndarray:
        text, n = simplify_text(text, self.config.norm_config), self.config.n_grams
        grams = (text[i:i + n] for i in range(len(text) - n + 1))
        return np.fromiter((self._hash_func(g) for g in grams), dtype=np.uint64).reshape((-1, 1))


def signature_step(folder: str, cfg: DedupConfig) -> MinhashDedupSignature:
    # the tokenizer is never called (get_shingles is overridden) but saves loading NLTK for "en"
    return CharMinhashSignature(output_folder=folder, config=cfg.minhash(), language=CharTokenizer())


def jaccard(a: str, b: str, cfg: DedupConfig | None = None) -> float:
    """Exact Jaccard similarity of the shingle sets MinHash estimates (for tests and tuning)."""
    step = signature_step("/tmp/unused-kollm-minhash", cfg or DedupConfig())
    sa, sb = set(step.get_shingles(a).ravel().tolist()), set(step.get_shingles(b).ravel().tolist())
    return len(sa & sb) / max(1, len(sa | sb))


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[tuple[int, int], tuple[int, int]] = {}

    def find(self, x: tuple[int, int]) -> tuple[int, int]:
        self.parent.setdefault(x, x)
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while x != root:  # path compression
            self.parent[x], x = root, self.parent.get(x, x)
        return root

    def union(self, a: tuple[int, int], b: tuple[int, int]) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def read_duplicate_pairs(buckets_folder: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Pairs (task, doc index) written by datatrove's MinhashDedupBuckets (`*.dups`, 4 × uint32)."""
    pairs = []
    for path in sorted(Path(buckets_folder).glob("*.dups")):
        data = np.frombuffer(path.read_bytes(), dtype=np.dtype("<u4")).reshape(-1, 4)
        pairs.extend(((int(f1), int(d1)), (int(f2), int(d2))) for f1, d1, f2, d2 in data)
    return pairs


def decide_duplicates(sources: list[list[str]], hashes: list[list[int]] | None,
                      pairs: list[tuple[tuple[int, int], tuple[int, int]]]) -> dict[tuple[int, int], str]:
    """Given each task's document sources and text hashes and the MinHash pairs, return
    {(task, index): "exact_dup" | "near_dup"} for every document to drop. In each exact group and
    each near-duplicate cluster the smallest source survives."""
    drops: dict[tuple[int, int], str] = {}
    if hashes is not None:
        best: dict[int, tuple[tuple[str, int], int, int]] = {}
        for t, (srcs, hs) in enumerate(zip(sources, hashes)):
            for i, (s, h) in enumerate(zip(srcs, hs)):
                s = source_key(s)
                cur = best.get(h)
                if cur is None or s < cur[0]:
                    if cur is not None:
                        drops[(cur[1], cur[2])] = "exact_dup"
                    best[h] = (s, t, i)
                else:
                    drops[(t, i)] = "exact_dup"
    uf = _UnionFind()
    for a, b in pairs:
        uf.union(a, b)
    clusters: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for node in list(uf.parent):
        clusters.setdefault(uf.find(node), []).append(node)
    for members in clusters.values():
        alive = [m for m in members if m not in drops]
        if len(alive) > 1:
            keep = min(alive, key=lambda m: source_key(sources[m[0]][m[1]]))
            drops.update({m: "near_dup" for m in alive if m != keep})
    return drops



def dedup_texts(texts: list[str], sources: list[str], cfg: DedupConfig, workdir: str) -> dict[int, str]:
    """Run the same stages in this process on one list of texts: {index: reason} of drops.
    For tests, benchmarks and small corpora; the pipeline runs the stages as separate tasks."""
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets

    sigs, buckets = str(Path(workdir) / "sigs"), str(Path(workdir) / "buckets")
    docs = (Document(text=t, id=str(i)) for i, t in enumerate(texts))
    if cfg.near:
        signature_step(sigs, cfg).run(docs, rank=0, world_size=1)  # not a generator: runs here
        step = MinhashDedupBuckets(input_folder=sigs, output_folder=buckets, config=cfg.minhash())
        for b in range(cfg.num_buckets):
            step.run(None, rank=b, world_size=cfg.num_buckets)
    pairs = read_duplicate_pairs(buckets) if cfg.near else []
    hashes = [[text_hash(t) for t in texts]] if cfg.exact else None
    return {i: r for (_, i), r in decide_duplicates([sources], hashes, pairs).items()}
