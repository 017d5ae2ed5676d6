"""Readers/writers: JSONL + Parquet in, malformed rows counted with file and line, Parquet out."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datatrove.data import Document

from kollm.data.documents import DocumentReader, ParquetDocWriter, read_parquet_documents, resolve_inputs


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    lines = [
        json.dumps({"id": "a", "text": "첫 번째 문서", "lang": "ko", "rating": 3}, ensure_ascii=False).encode(),
        b'{"id": "b", "text": "broken',  # bad JSON
        json.dumps({"id": "c", "body": "no text field"}).encode(),
        b'{"id": "d", "text": "bad \xff\xfe bytes"}',  # invalid UTF-8
        b'{"id": "e", "text": "lone \\udc80 surrogate"}',  # JSON escape of an unpaired surrogate
        b"[1, 2, 3]",
        b"",
        json.dumps({"id": "f", "text": "second good one"}).encode(),
    ]
    (d / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    pq.write_table(pa.table({"id": ["p1", "p2", "p3"], "text": ["parquet one", None, "parquet three"]}),
                   d / "sub" / "b.parquet")
    pq.write_table(pa.table({"id": ["x"], "content": ["no text column"]}), d / "sub" / "c.parquet")
    (d / "notes.txt").write_text("ignored: not a document file")
    return d


def test_resolve_inputs(corpus):
    files = resolve_inputs([str(corpus)])
    assert [f.rsplit("/", 1)[-1] for f in files] == ["a.jsonl", "b.parquet", "c.parquet"]
    assert resolve_inputs([str(corpus / "sub" / "*.parquet"), str(corpus / "a.jsonl")]) == files
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        resolve_inputs([str(corpus / "nothing-here*.jsonl")])


def test_malformed_rows_are_counted_with_file_and_line(corpus, tmp_path):
    reader = DocumentReader([str(corpus)], errors_folder=str(tmp_path / "errors"))
    docs = list(reader.run())
    assert [d.id for d in docs] == ["a", "f", "p1", "p3"]
    assert docs[0].metadata == {"lang": "ko", "rating": 3, "source": f"{corpus}/a.jsonl:1"}
    assert docs[2].metadata["source"].endswith("b.parquet:1")
    counts = {k: v.total for k, v in reader.stats.stats.items() if k.startswith("malformed/")}
    assert counts == {"malformed/bad_json": 1, "malformed/no_text": 2, "malformed/invalid_utf8": 2,
                      "malformed/not_an_object": 1, "malformed/no_text_column": 1}
    errors = [json.loads(x) for x in (tmp_path / "errors" / "00000.jsonl").read_text().splitlines()]
    where = [(e["file"].rsplit("/", 1)[-1], e["line"], e["reason"].split(" ")[0]) for e in errors]
    assert where == [("a.jsonl", 2, "bad_json"), ("a.jsonl", 3, "no_text"), ("a.jsonl", 4, "invalid_utf8"),
                     ("a.jsonl", 5, "invalid_utf8"), ("a.jsonl", 6, "not_an_object"), ("b.parquet", 2, "no_text"),
                     ("c.parquet", 0, "no_text_column")]


def test_files_are_sharded_across_tasks(corpus):
    reader = DocumentReader([str(corpus)])
    ids = [[d.id for d in reader.run(rank=r, world_size=2)] for r in range(2)]
    # sorted files round-robin: rank 0 gets a.jsonl and c.parquet (no text column), rank 1 b.parquet
    assert ids == [["a", "f"], ["p1", "p3"]]


def test_writer_round_trip(tmp_path):
    docs = [Document(text="한국어 문서", id="1", metadata={"lang": "ko", "lang_score": 0.9, "quality": 0.5,
                                                           "source": "x:1", "rating": 10}),
            Document(text="plain", id="2", metadata={"source": "x:2"})]
    out = list(ParquetDocWriter(str(tmp_path / "o")).run(iter(docs), rank=3))
    assert out == docs
    back = list(read_parquet_documents(str(tmp_path / "o" / "00003.parquet")))
    assert [(d.id, d.text) for d in back] == [("1", "한국어 문서"), ("2", "plain")]
    assert back[0].metadata == {"lang": "ko", "lang_score": pytest.approx(0.9), "quality": 0.5, "source": "x:1",
                                "rating": 10}
    assert back[1].metadata == {"source": "x:2"}
    empty = list(ParquetDocWriter(str(tmp_path / "o")).run(iter([]), rank=4))
    assert empty == [] and pq.read_table(tmp_path / "o" / "00004.parquet").num_rows == 0


def test_source_order_compares_lines_as_numbers():
    from kollm.data.documents import source_key

    assert sorted(["/a.jsonl:10", "/a.jsonl:9", "/b.jsonl:1", "/a.jsonl:100"], key=source_key) == [
        "/a.jsonl:9", "/a.jsonl:10", "/a.jsonl:100", "/b.jsonl:1"]


def test_truncated_gzip_keeps_what_was_read(tmp_path):
    import gzip

    from kollm.data.documents import iter_rows

    data = gzip.compress(b"".join(json.dumps({"text": f"row {i} " * 50}).encode() + b"\n" for i in range(200)))
    (tmp_path / "t.jsonl.gz").write_bytes(data[: len(data) // 2])
    rows = list(iter_rows(str(tmp_path / "t.jsonl.gz")))
    good = [r for _, r, _ in rows if r is not None]
    assert 0 < len(good) < 200 and good[0]["text"].startswith("row 0 ")
    line, row, reason = rows[-1]
    assert row is None and reason.startswith("unreadable_file") and line == len(good) + 1
