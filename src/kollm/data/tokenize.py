"""`kollm data tokenize`: curated documents → per-language token shards (kollm.data.shards).

Each input file (Parquet/JSONL rows with `text`, `lang`, optional `quality`) becomes one part per
language it contains, `ROOT/<lang>/<file stem>-<path hash>/`, so parts are named by their input
and a rerun finds them again. Files are spread over worker processes; a single file is encoded
in-process with `tokenizers`' own multi-threaded batch encoding instead. Each document is its
BOS token, the text's tokens and the EOS token, as Llama 3 trains: BOS is what the tokenizer's
own post-processor puts before a text (`<|begin_of_text|>` for kollm's tokenizers), so the model
sees in training what `AutoTokenizer` on its export feeds it; EOS (the tokenizer's own by default:
the `eos_token` of the tokenizer_config.json beside it, as Megatron's `--append-eod` takes the
tokenizer's EOD) so a model trained on packed sequences learns where documents end; index.npy keeps
the exact boundaries for the attention masks. A chat model's `eos_token` is often its end of turn
(SmolLM2-Instruct: `<|im_end|>`): continual pretraining of one passes `--eos` with the token its
pretraining ended documents with (SmolLM2: `<|endoftext|>`; Llama 3: `<|end_of_text|>`).

Resuming: a file is done once `ROOT/.progress/<part>.json` exists (written after every language
part of that file is closed). A file without it is redone from scratch, its partial parts
removed first. Shards from a different tokenizer in the same ROOT are an error.

Malformed rows (bad JSON, no text, no or unusable `lang`) are counted, logged with file:line and
listed in the progress record; they never stop the file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from kollm.argtypes import positive_int
from kollm.data.documents import iter_rows, resolve_inputs
from kollm.data.shards import ShardWriter
from kollm.tokenizer.extend import load_tokenizer_json
from kollm.tokenizer.train import tokenizer_hash

PROGRESS = ".progress"
LANG_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
MAX_LOGGED = 20  # malformed rows printed per file; all are counted
LLAMA3_EOS = "<|end_of_text|>"


def encode_texts(tok: Tokenizer, texts: list[str], eos_id: int | None = None,
                 prefix: tuple[int, ...] = ()) -> list[np.ndarray]:
    """The encode path: one batched call (no offsets, no special tokens) → uint32 arrays, each
    `prefix` (the BOS) + text + `eos_id` when given."""
    encodings = tok.encode_batch_fast(texts, add_special_tokens=False)
    if eos_id is None and not prefix:
        return [np.asarray(e.ids, dtype=np.uint32) for e in encodings]
    tail = [] if eos_id is None else [eos_id]
    return [np.asarray([*prefix, *e.ids, *tail], dtype=np.uint32) for e in encodings]


def bos_prefix(tok: Tokenizer, bos: str | None = "auto") -> tuple[int, ...]:
    """The ids a document starts with. "auto": what the tokenizer's own post-processor puts before
    a text -- `<|begin_of_text|>` for kollm's (Llama 3's) tokenizers -- so training sees exactly
    what `AutoTokenizer` on the exported model feeds it; a token name: that token; "": nothing."""
    if not bos:
        return ()
    if bos != "auto":
        i = tok.token_to_id(bos)
        if i is None:
            raise ValueError(f"BOS token {bos!r} is not in the tokenizer's vocabulary (pass --bos '' for none)")
        return (i,)
    plain = tok.encode("a", add_special_tokens=False).ids
    full = tok.encode("a", add_special_tokens=True).ids
    starts = [i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain]
    return tuple(full[: starts[0]]) if starts else ()


def default_eos(tokenizer: str | Path | Tokenizer, tok: Tokenizer) -> str:
    """The tokenizer's own EOS: `eos_token` in the tokenizer_config.json beside its tokenizer.json;
    without one (a bare tokenizer.json, an in-memory tokenizer) Llama 3's `<|end_of_text|>`, the EOS
    of kollm's own tokenizers, if the vocabulary has it."""
    if not isinstance(tokenizer, Tokenizer):
        p = Path(tokenizer)
        cfg = (p if p.is_dir() else p.parent) / "tokenizer_config.json"
        if cfg.is_file():
            eos = json.loads(cfg.read_text(encoding="utf-8")).get("eos_token")
            eos = eos.get("content") if isinstance(eos, dict) else eos  # older configs: an AddedToken dict
            if isinstance(eos, str) and eos:
                return eos
    if tok.token_to_id(LLAMA3_EOS) is not None:
        return LLAMA3_EOS
    raise ValueError(f"{tokenizer if not isinstance(tokenizer, Tokenizer) else 'the tokenizer'}: no eos_token in a "
                     f"tokenizer_config.json and no {LLAMA3_EOS} in the vocabulary; pass --eos TOKEN ('' for none)")


def eos_id_of(tok: Tokenizer, eos: str | None) -> int | None:
    if not eos:
        return None
    i = tok.token_to_id(eos)
    if i is None:
        raise ValueError(f"EOS token {eos!r} is not in the tokenizer's vocabulary (pass --eos '' for none)")
    return i


def part_name(path: str) -> str:
    return f"{Path(path).name.split('.')[0]}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"


def _rows(path: str, bad: Counter, log: list[str]) -> Iterator[tuple[str, str, float | None]]:
    for line, row, reason in iter_rows(path):
        if row is not None:
            lang, quality = row.get("lang"), row.get("quality")
            if not isinstance(lang, str) or not LANG_RE.fullmatch(lang):
                row, reason = None, f"bad_lang ({lang!r})"
            elif quality is not None and not isinstance(quality, int | float):
                row, reason = None, f"bad_quality ({quality!r})"
        if row is None:
            bad[reason.split(":")[0].split(" ")[0]] += 1
            if len(log) < MAX_LOGGED:
                log.append(f"{path}:{line}: {reason}")
            continue
        yield row["text"], lang, None if quality is None else float(quality)


def tokenize_file(tok: Tokenizer, path: str, root: Path, batch_size: int = 1000,
                  eos: str | None = "<|end_of_text|>", prefix: tuple[int, ...] = ()) -> dict:
    """Tokenize one input file into its per-language parts and mark it done; returns its record."""
    part, thash, eos_id = part_name(path), tokenizer_hash(tok), eos_id_of(tok, eos)
    for stale in root.glob(f"*/{part}"):  # left by an interrupted run: redo the whole file
        shutil.rmtree(stale)
    writers: dict[str, ShardWriter] = {}
    bad: Counter = Counter()
    log: list[str] = []
    docs: Counter = Counter()
    tokens: Counter = Counter()

    def flush(batch: list[tuple[str, str, float | None]]) -> None:
        for (_, lang, quality), ids in zip(batch, encode_texts(tok, [b[0] for b in batch], eos_id, prefix)):
            if lang not in writers:
                writers[lang] = ShardWriter(root / lang / part, lang, thash)
            writers[lang].add(ids, quality)
            docs[lang] += 1
            tokens[lang] += ids.size

    batch: list[tuple[str, str, float | None]] = []
    for item in _rows(path, bad, log):
        batch.append(item)
        if len(batch) == batch_size:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    for w in writers.values():
        w.close()
    for line in log:
        print(f"malformed row: {line}", file=sys.stderr)
    record = {"file": path, "part": part, "tokenizer_hash": thash, "eos": eos or None, "bos": list(prefix),
              "docs": dict(docs), "tokens": dict(tokens),
              "malformed": dict(bad), "malformed_examples": log}
    marker = root / PROGRESS / f"{part}.json"
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False))
    os.replace(tmp, marker)  # last: the file counts as done only once all its parts are
    return record


_worker_tok: Tokenizer | None = None


def _init_worker(tok_json: str) -> None:
    global _worker_tok
    # One process per core already; tokenizers' own threads would oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tok = Tokenizer.from_str(tok_json)


def _work(args: tuple[str, str, int, str | None, tuple[int, ...]]) -> dict:
    path, root, batch_size, eos, prefix = args
    return tokenize_file(_worker_tok, path, Path(root), batch_size, eos, prefix)


def tokenize(inputs: list[str], tokenizer: str | Path | Tokenizer, root: str | Path, workers: int = 1,
             batch_size: int = 1000, eos: str | None = "auto", bos: str | None = "auto") -> dict:
    """Tokenize every input file not already done under `root`. Returns a summary. Documents are
    BOS (`bos_prefix`) + text + EOS, as Llama 3 trains; EOS "auto" is the tokenizer's own
    (`default_eos`), "" or None none."""
    for key, v in (("workers", workers), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"tokenize: {key} must be a positive integer, got {v!r}")
    tok = load_tokenizer_json(tokenizer)
    eos = default_eos(tokenizer, tok) if eos == "auto" else (eos or None)
    eos_id_of(tok, eos)  # fail before any work
    prefix = bos_prefix(tok, bos)
    root = Path(root)
    files = resolve_inputs(inputs)
    thash = tokenizer_hash(tok)
    done, todo = [], []
    for f in files:
        marker = root / PROGRESS / f"{part_name(f)}.json"
        if marker.is_file():
            record = json.loads(marker.read_text())
            if (record.get("tokenizer_hash"), record.get("eos"), record.get("bos")) != (thash, eos, list(prefix)):
                raise ValueError(f"{marker}: {f} was tokenized with tokenizer {record.get('tokenizer_hash')}, EOS "
                                 f"{record.get('eos')!r} and BOS ids {record.get('bos')}, not {thash}, {eos!r} and "
                                 f"{list(prefix)}; use a new output directory")
            done.append(record)
        else:
            todo.append(f)
    t0 = time.perf_counter()
    if workers <= 1 or len(todo) <= 1:
        new = [tokenize_file(tok, f, root, batch_size, eos, prefix) for f in todo]
    else:
        ctx = mp.get_context("spawn")  # fork after tokenizers' thread pool started is unsafe
        with ctx.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(tok.to_str(),)) as pool:
            new = list(pool.imap_unordered(_work, [(f, str(root), batch_size, eos, prefix) for f in todo]))
    seconds = time.perf_counter() - t0
    docs, tokens, bad = Counter(), Counter(), Counter()
    for r in done + new:
        docs.update(r["docs"])
        tokens.update(r["tokens"])
        bad.update(r["malformed"])
    return {"files": len(files), "skipped_done": len(done), "eos": eos, "tokenized": len(new), "tokenizer_hash": thash,
            "docs": dict(docs), "tokens": dict(tokens), "malformed": dict(bad), "seconds": seconds,
            "tokens_per_second": sum(sum(r["tokens"].values()) for r in new) / max(seconds, 1e-9)}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kollm data tokenize", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="curated .parquet/.jsonl files, globs or directories")
    p.add_argument("--tokenizer", required=True, help="tokenizer.json or a directory holding one")
    p.add_argument("--out", required=True, help="shard root (ROOT/<lang>/<part>/)")
    p.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1)
    p.add_argument("--batch-size", type=positive_int, default=1000, help="documents per encode call")
    p.add_argument("--eos", default="auto", help="token appended to every document; auto (default): the "
                   "tokenizer's own eos_token (tokenizer_config.json; <|end_of_text|> without one), '' for none")
    p.add_argument("--bos", default="auto", help="token every document starts with; auto (default): what the "
                   "tokenizer puts before a text, as the exported model's AutoTokenizer does ('' for none)")
    p.add_argument("--dry-run", action="store_true", help="print the input bytes and exit")
    p.add_argument("--plan-json", action="store_true", help="dry run: print the plan as one JSON object")
    args = p.parse_args(argv)
    if args.dry_run:
        from kollm.plan import emit, input_plan

        return emit(input_plan("data tokenize", args.inputs, "shards: 4 bytes (uint32) per token"), args)
    summary = tokenize(args.inputs, args.tokenizer, args.out, args.workers, args.batch_size, args.eos, args.bos)
    for lang in sorted(summary["tokens"]):
        print(f"{lang}: {summary['docs'][lang]} docs, {summary['tokens'][lang]} tokens")
    if summary["malformed"]:
        print(f"malformed rows: {summary['malformed']}")
    print(f"EOS after every document: {summary['eos']!r}" if summary["eos"] else "no EOS after documents")
    print(f"{summary['tokenized']} files tokenized, {summary['skipped_done']} already done "
          f"({summary['tokens_per_second']:,.0f} tokens/s) -> {args.out}")
    return 0
