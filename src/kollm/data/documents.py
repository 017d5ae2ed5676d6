"""Reading and writing documents: JSONL (optionally .gz) and Parquet in, Parquet out.

Rows are `{"text", optional "id", "lang", ...}` (docs/design.md §3). A malformed row — bad JSON,
no string `text`, invalid UTF-8 (raw bytes or a lone surrogate escape), a Parquet file without a
`text` column — is counted under `malformed/<reason>` and logged with its file and line; the rest
of the file is still read. Inputs are files, globs or directories. Readers and writers are
datatrove `PipelineStep`s so that any datatrove executor shards them: files go to tasks
round-robin in sorted order (as datatrove's own readers do), so a corpus should come in more
files than there are tasks. Every document carries `source` = "path:line", a key that does not
depend on how files were sharded; dedup and percentile decisions break ties on it.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from kollm.jsonrows import JSONL_SUFFIXES, PARQUET_SUFFIXES
from kollm.jsonrows import iter_rows as read_rows

CORE = ("id", "text", "lang", "lang_score", "quality", "source")
SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("lang", pa.string()),
                    ("lang_score", pa.float32()), ("quality", pa.float32()), ("source", pa.string()),
                    ("meta", pa.string())])


def _is_doc_file(path: Path) -> bool:
    return path.is_file() and path.name.endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES)


def resolve_inputs(specs: list[str] | str) -> list[str]:
    """Files, globs and directories (searched recursively) → sorted, de-duplicated file list."""
    files: set[str] = set()
    for spec in [specs] if isinstance(specs, str) else specs:
        p = Path(spec)
        if p.is_dir():
            found = [q for q in p.rglob("*") if _is_doc_file(q)]
        elif p.is_file():
            found = [p]
        else:
            found = [Path(q) for q in glob.glob(spec, recursive=True) if _is_doc_file(Path(q))]
            if not found:
                raise FileNotFoundError(f"no input documents match {spec!r}")
        files.update(str(q.resolve()) for q in found)
    if not files:
        raise FileNotFoundError(f"no .jsonl/.json(.gz)/.parquet files in {specs!r}")
    return sorted(files)


def _check_row(row: object) -> tuple[dict | None, str | None]:
    if not isinstance(row, dict):
        return None, "not_an_object"
    text = row.get("text")
    if not isinstance(text, str):
        return None, "no_text"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a "\udc80" escape in JSON decodes to a lone surrogate
        return None, "invalid_utf8"
    return row, None


def iter_rows(path: str, check=_check_row, column: str | None = "text") -> Iterator[tuple[int, dict | None, str | None]]:
    """kollm.jsonrows.iter_rows with a document's check (a string `text`) and Parquet column."""
    return read_rows(path, check, column)


def source_key(source: str) -> tuple[str, int]:
    """Order of "path:line" sources: by path, then line as a number (":9" before ":10")."""
    path, _, line = source.rpartition(":")
    return (path, int(line)) if line.isdigit() else (source, -1)


def row_to_document(row: dict, source: str) -> Document:
    meta = {k: v for k, v in row.items() if k not in ("text", "id")}
    meta["source"] = source
    return Document(text=row["text"], id=str(row.get("id", source)), metadata=meta)


class DocumentReader(PipelineStep):
    """Read this task's share of the input files. Malformed rows are counted, logged and written
    to `<errors_folder>/<rank>.jsonl` as {"file", "line", "reason"} for the run report."""

    type = "kollm"
    name = "read"

    def __init__(self, inputs: list[str] | str, errors_folder: str | None = None, limit: int = -1):
        super().__init__()
        self.files = resolve_inputs(inputs)
        self.errors_folder = errors_folder
        self.limit = limit

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        errors = None
        if self.errors_folder:
            Path(self.errors_folder).mkdir(parents=True, exist_ok=True)
            errors = open(Path(self.errors_folder) / f"{rank:05d}.jsonl", "w", encoding="utf-8")
        n = 0
        try:
            for path in self.files[rank::world_size]:
                self.stat_update("input_files")
                for line, row, reason in iter_rows(path):
                    if row is None:
                        kind = reason.split(":")[0].split(" ")[0]
                        self.stat_update(f"malformed/{kind}")
                        logger.warning(f"{path}:{line}: malformed row ({reason})")
                        if errors:
                            errors.write(json.dumps({"file": path, "line": line, "reason": reason}) + "\n")
                        continue
                    if 0 <= self.limit <= n:
                        return
                    n += 1
                    doc = row_to_document(row, f"{path}:{line}")
                    self.stat_update(f"docs_out/{doc.metadata.get('lang', 'und')}")
                    self.stat_update(f"bytes_out/{doc.metadata.get('lang', 'und')}",
                                     value=len(doc.text.encode("utf-8")))
                    yield doc
        finally:
            if errors:
                errors.close()


def document_to_row(doc: Document, extra_columns: tuple[str, ...] = ()) -> dict:
    m = doc.metadata
    extra = {k: v for k, v in m.items() if k not in CORE and k not in extra_columns}
    row = {"id": doc.id, "text": doc.text, "lang": m.get("lang"), "lang_score": m.get("lang_score"),
           "quality": m.get("quality"), "source": m.get("source"),
           "meta": json.dumps(extra, ensure_ascii=False, default=str) if extra else None}
    row.update({k: m.get(k) for k in extra_columns})
    return row


def read_parquet_documents(path: str) -> Iterator[Document]:
    """Read back a file written by ParquetDocWriter."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            meta = json.loads(row.pop("meta") or "{}")
            doc_id, text = row.pop("id"), row.pop("text")
            meta.update({k: v for k, v in row.items() if v is not None})
            yield Document(text=text, id=doc_id, metadata=meta)


class ParquetDocWriter(PipelineStep):
    """Write `<folder>/<rank>.parquet` with a fixed schema (id, text, lang, lang_score, quality,
    source, meta = other fields as JSON) and pass documents on. The file is written even when
    empty so that every task's output exists; a fixed schema keeps heterogeneous inputs
    from breaking Parquet's per-file schema."""

    type = "kollm"
    name = "write"

    def __init__(self, output_folder: str, extra_columns: dict[str, pa.DataType] | None = None,
                 batch_size: int = 1000):
        super().__init__()
        self.output_folder = output_folder
        self.extra_columns = extra_columns or {}
        self.batch_size = batch_size

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        Path(self.output_folder).mkdir(parents=True, exist_ok=True)
        path = Path(self.output_folder) / f"{rank:05d}.parquet"
        schema = SCHEMA
        for name, dtype in self.extra_columns.items():
            schema = schema.append(pa.field(name, dtype))
        extra = tuple(self.extra_columns)
        rows: list[dict] = []
        with pq.ParquetWriter(str(path) + ".tmp", schema, compression="zstd") as writer:
            for doc in data:
                rows.append(document_to_row(doc, extra))
                if len(rows) >= self.batch_size:
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                    rows = []
                self.stat_update("written")
                yield doc
            if rows:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
        # rename last: a task killed mid-write never leaves a truncated file that looks finished
        Path(str(path) + ".tmp").replace(path)
