"""Token shards: round trip through ShardWriter/ShardReader, the on-disk format byte for byte,
resumable (incomplete) parts, and clear errors for inconsistent parts."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kollm.data.shards import LanguageCorpus, ShardReader, ShardWriter, is_complete, open_shards


def write_part(path, lang, docs, quality=None, tok="h1"):
    with ShardWriter(path, lang, tok) as w:
        for i, d in enumerate(docs):
            w.add(d, None if quality is None else quality[i])
    return path


def random_docs(rng, n, max_len=50, vocab=1000):
    return [rng.integers(0, vocab, size=int(rng.integers(0, max_len))) for _ in range(n)]


def test_round_trip_and_format(tmp_path):
    rng = np.random.default_rng(0)
    docs = random_docs(rng, 30) + [[2**32 - 1, 0, 7]]
    part = write_part(tmp_path / "ko" / "part-00000", "ko", docs)
    # the raw format other tools read: uint32 LE concatenation + int64 start offsets
    raw = np.fromfile(part / "tokens.bin", dtype="<u4")
    np.testing.assert_array_equal(raw, np.concatenate([np.asarray(d, np.int64) for d in docs]).astype("<u4"))
    index = np.load(part / "index.npy")
    assert index.dtype == np.int64 and index[0] == 0 and index[-1] == raw.size
    np.testing.assert_array_equal(np.diff(index), [len(d) for d in docs])
    meta = json.loads((part / "meta.json").read_text())
    assert meta == {"lang": "ko", "tokenizer_hash": "h1", "num_tokens": raw.size, "num_docs": 31,
                    "max_token_id": 2**32 - 1, "quality": None, "complete": True}
    assert not (part / "quality.npy").exists()

    r = ShardReader(part)
    assert (r.lang, r.num_docs, r.num_tokens) == ("ko", 31, raw.size)
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(r.doc(i), d)
    assert isinstance(r.tokens, np.memmap) and r.doc(3).base is not None  # a view, not a copy
    np.testing.assert_array_equal(r.doc(-1), [2**32 - 1, 0, 7])
    np.testing.assert_array_equal(r.lens(5, 9), r.doc_lens[5:9])
    with pytest.raises(IndexError):
        r.doc(31)


def test_quality_stats_and_per_document_scores(tmp_path):
    docs = [[1, 2], [3], [4, 5, 6], [7]]
    part = write_part(tmp_path / "en" / "p0", "en", docs, quality=[1.0, None, 3.0, 2.0])
    meta = ShardReader(part).meta["quality"]
    assert meta["mean"] == pytest.approx(2.0) and meta["p50"] == pytest.approx(2.0) and meta["n"] == 3
    assert (meta["min"], meta["max"]) == (1.0, 3.0)
    q = ShardReader(part).quality
    np.testing.assert_array_equal(np.isnan(q), [False, True, False, False])


def test_incomplete_part_is_skipped_and_can_be_rewritten(tmp_path, caplog):
    write_part(tmp_path / "en" / "p0", "en", [[1, 2, 3]])
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "en" / "p1", "en", "h1") as w:
            w.add([9, 9])
            raise RuntimeError("killed mid-part")
    assert not is_complete(tmp_path / "en" / "p1")
    assert [r.dir.name for r in open_shards(tmp_path)["en"]] == ["p0"]
    assert "skipping 1 unfinished part" in caplog.text
    with pytest.raises(FileNotFoundError, match="not a complete shard part"):
        ShardReader(tmp_path / "en" / "p1")
    write_part(tmp_path / "en" / "p1", "en", [[4, 5]])  # resume: the part is made again from scratch
    shards = open_shards(tmp_path)
    assert [r.num_tokens for r in shards["en"]] == [3, 2]
    with pytest.raises(FileExistsError, match="already complete"):
        ShardWriter(tmp_path / "en" / "p1", "en", "h1")


def test_language_corpus_spans_parts(tmp_path):
    rng = np.random.default_rng(1)
    parts = [random_docs(rng, n) for n in (5, 0, 7, 3)]
    for i, docs in enumerate(parts):
        write_part(tmp_path / "ja" / f"part-{i:05d}", "ja", docs, quality=[float(i)] * len(docs))
    corpus = LanguageCorpus(open_shards(tmp_path)["ja"])
    flat = [d for docs in parts for d in docs]
    assert len(corpus) == 15 and corpus.num_tokens == sum(map(len, flat))
    for i, d in enumerate(flat):
        np.testing.assert_array_equal(corpus[i], d)
    assert corpus.locate(5) == (2, 0) and corpus.locate(14) == (3, 2)
    np.testing.assert_array_equal(corpus.lens(3, 14), [len(d) for d in flat[3:14]])
    np.testing.assert_array_equal(corpus.quality(4, 13), [0.0] + [2.0] * 7 + [3.0])


def test_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="outside uint32"):
        ShardWriter(tmp_path / "x", "en", "h").add([1, -2])
    part = write_part(tmp_path / "en" / "p0", "en", [[1, 2, 3]])
    (part / "tokens.bin").write_bytes(b"\0" * 8)  # truncated
    with pytest.raises(ValueError, match=r"tokens\.bin"):
        ShardReader(part)
    write_part(tmp_path / "ko" / "p0", "ko", [[1]], tok="other")
    write_part(tmp_path / "ko" / "p1", "ko", [[1]], tok="other")
    (part / "tokens.bin").write_bytes(b"\0" * 12)
    with pytest.raises(ValueError, match="different tokenizers"):
        open_shards(tmp_path)
    write_part(tmp_path / "de" / "p0", "fr", [[1]], tok="other")
    with pytest.raises(ValueError, match="sits under"):
        open_shards(tmp_path)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**32 - 1), max_size=20), max_size=12),
       st.integers(1, 4))
def test_any_split_into_parts_round_trips(tmp_path_factory, docs, n_parts):
    root = tmp_path_factory.mktemp("p")
    for p in range(n_parts):
        write_part(root / "en" / f"p{p}", "en", docs[p::n_parts])
    corpus = LanguageCorpus(open_shards(root)["en"])
    order = [d for p in range(n_parts) for d in docs[p::n_parts]]
    assert len(corpus) == len(order) and corpus.num_tokens == sum(map(len, docs))
    for i, d in enumerate(order):
        assert corpus[i].tolist() == d
    np.testing.assert_array_equal(corpus.lens(0, len(order)), [len(d) for d in order])
