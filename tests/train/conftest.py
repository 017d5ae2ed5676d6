"""Fixtures for trainer tests: token shards for the real loader (kollm.data.loader).

With the shared dev data present (../shared/data), the en and ko shards are the Korean–English
news sentences as UTF-8 bytes (ids < 256, fits the tiny vocabularies); without it, generated
documents of the same shape. Either way nothing is copied into the repository.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from kollm.data.shards import ShardWriter

sys.path.insert(0, str(Path(__file__).parent))  # synthetic.py, also used by tests/dist

PARALLEL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "corpus" / "ko-en-parallel"


def _documents(lang: str) -> list[np.ndarray]:
    src = PARALLEL / f"korean-english-park.dev.{lang}"
    rng = np.random.default_rng(0 if lang == "en" else 1)
    if src.is_file():
        lines = [ln for ln in src.read_text(encoding="utf-8").splitlines() if ln.strip()]
        # long documents (three sentences) and short ones (a headline-sized prefix) for the
        # long-context phase's long/short split
        docs = [(" ".join(lines[i:i + 3]) if i % 2 else lines[i][:16]).encode() for i in range(0, len(lines), 3)]
        return [np.frombuffer(d, dtype=np.uint8).astype(np.uint32) for d in docs]
    return [rng.integers(0, 256, size=int(rng.integers(8, 300))).astype(np.uint32) for _ in range(300)]


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    for lang in ("en", "ko"):
        rng = np.random.default_rng(7)
        with ShardWriter(root / lang / "part-00000", lang, "bytes") as w:
            for doc in _documents(lang):
                w.add(doc, float(rng.random()))
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, write_tiny_llama) -> Path:
    """The GRPO tests' policy: a tiny Llama (transformers writes it) whose tokenizer is trained
    on a+b=c sums, so arithmetic prompts tokenise short."""
    texts = [f"{a}+{b}={a + b}" for a in range(10) for b in range(10)] * 3
    return write_tiny_llama(tmp_path_factory.mktemp("policy") / "m", texts, ["<pad>", "<s>", "</s>"], 96, 32, 128, 0.5)
