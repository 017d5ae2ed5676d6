"""Token shards: per-language parts of concatenated uint32 token ids plus a document index.

Layout: `ROOT/<lang>/<part>/` holds
  tokens.bin   raw little-endian uint32 ids of all documents back to back (read as a memmap)
  index.npy    int64, num_docs + 1 document start offsets into tokens.bin, then the final end
  quality.npy  float32 per-document quality, NaN where unknown (only when some document had one)
  meta.json    {"lang", "tokenizer_hash", "num_tokens", "num_docs", "max_token_id" (checked against
                the model's vocabulary before training), "quality": stats | null, "complete": true}
meta.json is written last, atomically (temp file + rename): a part without it is unfinished, which
is how an interrupted `kollm data tokenize` resumes. Readers never load tokens into memory, so the
same code serves a test corpus and a 2 T-token one (the Megatron-LM / nanoGPT `.bin` + index idea).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
TOKEN_DTYPE = np.dtype("<u4")
META, TOKENS, INDEX, QUALITY = "meta.json", "tokens.bin", "index.npy", "quality.npy"


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def is_complete(part_dir: str | Path) -> bool:
    """Whether a part was closed (its meta.json exists); unfinished parts are re-made on resume."""
    return (Path(part_dir) / META).is_file()


class ShardWriter:
    """Appends documents to one part. Use as a context manager; `close()` makes the part complete.

    Leaving the `with` block on an exception does not write meta.json, so the part stays unfinished.
    """

    def __init__(self, out_dir: str | Path, lang: str, tokenizer_hash: str):
        self.dir = Path(out_dir)
        if is_complete(self.dir):
            raise FileExistsError(f"{self.dir}: shard part is already complete ({META} exists)")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lang, self.tokenizer_hash = lang, tokenizer_hash
        self._f = open(self.dir / TOKENS, "wb")  # truncates what an interrupted run left
        self._offsets: list[int] = [0]
        self._quality: list[float] = []
        self._max_id = -1  # in meta.json: a trainer checks it against the model's vocabulary
        self._closed = False

    def add(self, tokens: Sequence[int] | np.ndarray, quality: float | None = None) -> None:
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ValueError(f"{self.dir}: document {len(self._offsets) - 1} is not a 1-D token sequence")
        if arr.dtype != TOKEN_DTYPE:
            if arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > np.iinfo(np.uint32).max):
                raise ValueError(
                    f"{self.dir}: document {len(self._offsets) - 1} has token ids outside uint32 "
                    f"(dtype {arr.dtype})"
                )
            arr = arr.astype(TOKEN_DTYPE)
        if arr.size:
            self._max_id = max(self._max_id, int(arr.max()))
        self._f.write(arr.tobytes())
        self._offsets.append(self._offsets[-1] + arr.size)
        self._quality.append(np.nan if quality is None else float(quality))

    def close(self) -> dict:
        if self._closed:
            raise ValueError(f"{self.dir}: shard writer already closed")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._closed = True
        index = np.asarray(self._offsets, dtype=np.int64)
        _atomic_write(self.dir / INDEX, lambda f: np.save(f, index))
        q = np.asarray(self._quality, dtype=np.float32)
        known = q[~np.isnan(q)]
        stats = None
        if known.size:
            _atomic_write(self.dir / QUALITY, lambda f: np.save(f, q))
            stats = {"mean": float(known.mean()), "min": float(known.min()), "max": float(known.max()),
                     **{f"p{p}": float(np.percentile(known, p)) for p in (10, 50, 90)}, "n": int(known.size)}
        elif (self.dir / QUALITY).exists():
            (self.dir / QUALITY).unlink()  # left by an interrupted run that had qualities
        meta = {"lang": self.lang, "tokenizer_hash": self.tokenizer_hash, "num_tokens": int(index[-1]),
                "num_docs": len(index) - 1, "max_token_id": self._max_id, "quality": stats, "complete": True}
        _atomic_write(self.dir / META, lambda f: f.write(json.dumps(meta, indent=1).encode()))
        return meta

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif not self._closed:
            self._f.close()


class ShardReader:
    """One complete part, memory-mapped. `doc(i)` is a view into tokens.bin, never a copy."""

    def __init__(self, part_dir: str | Path):
        self.dir = Path(part_dir)
        meta_path = self.dir / META
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.dir}: not a complete shard part (no {META})")
        try:
            self.meta: dict = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{meta_path}: invalid JSON ({e})") from None
        for key in ("lang", "tokenizer_hash", "num_tokens", "num_docs"):
            if key not in self.meta:
                raise ValueError(f"{meta_path}: missing key {key!r}")
        if self.meta.get("complete") is not True:
            raise ValueError(f"{meta_path}: part is not marked complete")
        self.lang: str = self.meta["lang"]
        self.num_docs: int = int(self.meta["num_docs"])
        self.num_tokens: int = int(self.meta["num_tokens"])
        self.index: np.ndarray = np.load(self.dir / INDEX, mmap_mode="r")
        if self.index.shape != (self.num_docs + 1,) or int(self.index[-1]) != self.num_tokens:
            raise ValueError(f"{self.dir / INDEX}: {self.index.shape[0]} offsets ending at {int(self.index[-1])} "
                             f"do not match {META} ({self.num_docs} docs, {self.num_tokens} tokens)")
        size = (self.dir / TOKENS).stat().st_size
        if size != self.num_tokens * TOKEN_DTYPE.itemsize:
            raise ValueError(f"{self.dir / TOKENS}: {size} bytes, {META} says {self.num_tokens} uint32 tokens")
        # np.memmap cannot map an empty file
        self.tokens: np.ndarray = (np.memmap(self.dir / TOKENS, dtype=TOKEN_DTYPE, mode="r") if size
                                   else np.zeros(0, TOKEN_DTYPE))
        qpath = self.dir / QUALITY
        self.quality: np.ndarray | None = np.load(qpath, mmap_mode="r") if qpath.is_file() else None
        self._doc_lens: np.ndarray | None = None

    @property
    def doc_lens(self) -> np.ndarray:
        if self._doc_lens is None:
            self._doc_lens = np.diff(self.index)
        return self._doc_lens

    def lens(self, lo: int, hi: int) -> np.ndarray:
        """Lengths of documents lo..hi-1 without materialising all of `doc_lens`."""
        return np.diff(self.index[lo:hi + 1])

    def doc(self, i: int) -> np.ndarray:
        if not -self.num_docs <= i < self.num_docs:
            raise IndexError(f"{self.dir}: document {i} out of range ({self.num_docs} documents)")
        i %= self.num_docs
        return self.tokens[self.index[i]:self.index[i + 1]]

    def __len__(self) -> int:
        return self.num_docs

    def __repr__(self) -> str:
        return f"ShardReader({str(self.dir)!r}, lang={self.lang!r}, docs={self.num_docs}, tokens={self.num_tokens})"


def open_shards(root: str | Path) -> dict[str, list[ShardReader]]:
    """language -> its complete parts in sorted order. Unfinished parts are skipped (a tokenize run
    may still be writing them); mixed tokenizers or a part filed under the wrong language are errors."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: shard root is not a directory")
    out: dict[str, list[ShardReader]] = {}
    hashes: dict[str, Path] = {}
    for lang_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        dirs = sorted(p for p in lang_dir.iterdir() if p.is_dir())
        parts = [ShardReader(p) for p in dirs if is_complete(p)]
        if len(parts) < len(dirs):
            log.warning("%s: skipping %d unfinished part(s) (no %s)", lang_dir, len(dirs) - len(parts), META)
        for r in parts:
            if r.lang != lang_dir.name:
                raise ValueError(f"{r.dir / META}: lang {r.lang!r} but the part sits under {lang_dir.name!r}/")
            hashes.setdefault(r.meta["tokenizer_hash"], r.dir)
        if parts:
            out[lang_dir.name] = parts
    if len(hashes) > 1:
        where = ", ".join(f"{h} ({p})" for h, p in hashes.items())
        raise ValueError(f"{root}: shards were made with different tokenizers: {where}")
    if not out:
        raise FileNotFoundError(f"{root}: no complete shard parts (expected ROOT/<lang>/<part>/{META})")
    return out


class LanguageCorpus:
    """One language's parts as one sequence of documents (global index -> (part, local index))."""

    def __init__(self, readers: Sequence[ShardReader]):
        if not readers:
            raise ValueError("LanguageCorpus needs at least one shard part")
        langs = {r.lang for r in readers}
        if len(langs) != 1:
            raise ValueError(f"LanguageCorpus parts mix languages: {sorted(langs)}")
        self.lang: str = readers[0].lang
        self.readers = list(readers)
        self.starts = np.cumsum([0] + [r.num_docs for r in self.readers])  # global index of each part's doc 0
        self.num_docs = int(self.starts[-1])
        self.num_tokens = sum(r.num_tokens for r in self.readers)
        ids = [r.meta.get("max_token_id") for r in self.readers]  # absent in shards of older versions
        self.max_token_id: int | None = None if None in ids else max(ids)

    def __len__(self) -> int:
        return self.num_docs

    def locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < self.num_docs:
            raise IndexError(f"{self.lang}: document {i} out of range ({self.num_docs} documents)")
        part = int(np.searchsorted(self.starts, i, side="right")) - 1
        return part, i - int(self.starts[part])

    def doc(self, i: int) -> np.ndarray:
        part, local = self.locate(i)
        return self.readers[part].doc(local)

    __getitem__ = doc

    def _ranges(self, lo: int, hi: int):
        """(reader, local lo, local hi) for the parts that global documents lo..hi-1 touch."""
        first = int(np.searchsorted(self.starts, lo, side="right")) - 1
        for p in range(max(first, 0), len(self.readers)):
            s = int(self.starts[p])
            if s >= hi:
                break
            yield self.readers[p], max(lo - s, 0), min(hi - s, self.readers[p].num_docs)

    def lens(self, lo: int, hi: int) -> np.ndarray:
        parts = [r.lens(a, b) for r, a, b in self._ranges(lo, hi)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def quality(self, lo: int, hi: int) -> np.ndarray:
        """Per-document quality of lo..hi-1: the document's own score, else its part's mean from
        meta.json, else NaN (unknown)."""
        out = []
        for r, a, b in self._ranges(lo, hi):
            if r.quality is not None:
                out.append(np.asarray(r.quality[a:b], dtype=np.float64))
            else:
                mean = (r.meta.get("quality") or {}).get("mean", np.nan)
                out.append(np.full(b - a, np.nan if mean is None else float(mean)))
        return np.concatenate(out) if out else np.zeros(0)
