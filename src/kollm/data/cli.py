"""`kollm data SUBCOMMAND`: curate, report, judge, classifier {train, score}, tokenize.

`tokenize` belongs to kollm.data.tokenize and is handed its arguments untouched. Each subcommand
imports its modules when it runs (datatrove, torch, pyarrow): one never loads another's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kollm.argtypes import config_text, positive_int

USAGE = """usage: kollm data SUBCOMMAND [ARGS...]

subcommands:
  curate      normalize, language-ID, filters, quality, dedup, percentile keep → Parquet + report
  report      rebuild report.json / report.md of a curate output (after a Slurm/Ray run)
  judge       LLM-as-judge 0-5 scores: educational value of a sample, or SFT responses (--rubric sft)
  classifier  train a quality classifier on judged samples, or score a corpus with one
  tokenize    curated documents → token shards (kollm.data.tokenize)"""


def _curate(argv: list[str]) -> int:
    from kollm.data.pipeline import load_config, run_curation

    ap = argparse.ArgumentParser(prog="kollm data curate", description="Curate a corpus (docs/curation.md).")
    ap.add_argument("--config", help="YAML config (keys: see docs/curation.md); flags below override it")
    ap.add_argument("--input", action="append", help="file, glob or directory (repeatable)")
    ap.add_argument("--output", help="output directory")
    ap.add_argument("--workers", type=positive_int, help="parallel worker processes (local executor)")
    ap.add_argument("--tasks", type=positive_int, help="tasks for the prepare/write stages (default: workers)")
    ap.add_argument("--executor", choices=["local", "slurm", "ray"])
    ap.add_argument("--ray-address", help="ray: address of a running cluster (`ray start --head` prints it)")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the input bytes and exit; slurm: write the sbatch scripts and submit.sh to "
                         "OUTPUT/slurm/ instead of submitting")
    ap.add_argument("--plan-json", action="store_true", help="dry run: print the plan as one JSON object")
    ap.add_argument("--keep", help="keep preset: pretrain (en 80%%, others 50%%), anneal (20%%/10%%), all")
    ap.add_argument("--verbose", action="store_true", help="datatrove's per-stage logs on the console too "
                    "(always in OUTPUT/logs/)")
    args = ap.parse_args(argv)
    overrides = {"inputs": args.input, "output": args.output, "workers": args.workers, "tasks": args.tasks,
                 "executor": args.executor, "ray_address": args.ray_address}
    if args.keep:
        quality = {}
        if args.config:
            import yaml

            quality = (yaml.safe_load(config_text(args.config)) or {}).get("quality") or {}
        overrides["quality"] = {**quality, "keep": args.keep}
    cfg = load_config(args.config, overrides)
    if args.dry_run:
        from kollm.plan import emit, input_plan

        plan = input_plan("data curate", cfg.inputs or [], f"{cfg.workers} worker(s), executor {cfg.executor}")
        if cfg.executor != "slurm" or args.plan_json:
            return emit(plan, args)
        print(plan["text"])
    report = run_curation(cfg, dry_run=args.dry_run, verbose=args.verbose)
    if args.dry_run:
        print(f"sbatch scripts in {Path(cfg.output) / 'slurm'}; submit them with: bash {Path(cfg.output) / 'slurm' / 'submit.sh'}")
    elif report is None:
        print(f"submitted; when the jobs finish run: kollm data report {cfg.output}")
    else:
        print((Path(cfg.output) / "report.md").read_text(encoding="utf-8"))
    return 0


def _report(argv: list[str]) -> int:
    from kollm.data.pipeline import STAGES, write_report

    ap = argparse.ArgumentParser(prog="kollm data report")
    ap.add_argument("output", help="a `kollm data curate` output directory")
    args = ap.parse_args(argv)
    if not (Path(args.output) / "logs").is_dir():
        raise FileNotFoundError(f"not a curate output directory (no logs/): {args.output}")
    logs = Path(args.output) / "logs"
    launched = {d.name for d in logs.iterdir() if d.is_dir()} | {"write"}  # buckets only with near-dedup
    unfinished = [s for s in STAGES if s in launched and not (logs / s / "stats.json").is_file()]
    if unfinished:  # datatrove writes a stage's stats.json once all its tasks finished
        raise ValueError(f"{args.output}: stage(s) {', '.join(unfinished)} have not finished (no "
                         "logs/<stage>/stats.json); see logs/<stage>/logs/ for failed tasks")
    write_report(args.output)
    print((Path(args.output) / "report.md").read_text(encoding="utf-8"))
    return 0


def _judge(argv: list[str]) -> int:
    from kollm.data.judge import JudgeConfig, run_judge
    from kollm.openai_client import api_key_from_env

    ap = argparse.ArgumentParser(prog="kollm data judge", description="Score a sample with an LLM judge.")
    ap.add_argument("--input", action="append", required=True, help="file, glob or directory (repeatable)")
    ap.add_argument("--output", required=True, help="directory: judged.jsonl, cache.jsonl, summary.json")
    ap.add_argument("--endpoint", required=True, help="OpenAI-compatible base URL, e.g. http://host:8000/v1")
    ap.add_argument("--model", required=True)
    ap.add_argument("--per-language", type=int, default=1000, help="documents sampled per language")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-retries", type=int, default=6)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rubric", choices=["edu", "sft"], default="edu",
                    help="edu: educational value of documents (sampled per language); sft: quality of the "
                         "assistant's response in chat rows (every row; judged.jsonl = rows + score)")
    ap.add_argument("--limit", type=int, default=None, help="--rubric sft: judge only the first N rows")
    args = ap.parse_args(argv)
    cfg = JudgeConfig(endpoint=args.endpoint, model=args.model, api_key=api_key_from_env(args.api_key_env),
                      concurrency=args.concurrency, max_retries=args.max_retries, timeout_s=args.timeout)
    if args.rubric == "sft":
        from kollm.data.judge import run_judge_sft

        summary = run_judge_sft(args.input, args.output, cfg, args.limit)
    else:
        summary = run_judge(args.input, args.output, cfg, args.per_language, args.seed)
    print(json.dumps({k: v for k, v in summary.items() if not k.endswith("examples")}, indent=2))
    return 0 if summary["failed"] == 0 else 1


def _classifier(argv: list[str]) -> int:
    from kollm.data.classifier import FeatureConfig, QualityClassifier, load_judged, train_classifier

    ap = argparse.ArgumentParser(prog="kollm data classifier")
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="fit on judged.jsonl, report held-out P/R/F1, save")
    tr.add_argument("--judged", required=True)
    tr.add_argument("--output", required=True)
    tr.add_argument("--features", choices=["hashed", "encoder"], default="hashed")
    tr.add_argument("--encoder", help="Hugging Face encoder directory (--features encoder)")
    tr.add_argument("--test-fraction", type=float, default=0.2)
    tr.add_argument("--seed", type=int, default=0)
    sc = sub.add_parser("score", help="add a `quality` column to documents")
    sc.add_argument("--model", required=True)
    sc.add_argument("--input", action="append", required=True)
    sc.add_argument("--output", required=True, help="Parquet file")
    sc.add_argument("--batch-size", type=positive_int, default=4096)
    args = ap.parse_args(argv)
    if args.cmd == "train":
        texts, scores, errors = load_judged(args.judged)
        if errors.total:
            print(f"kollm data classifier: {args.judged}: {errors.summary()}", file=sys.stderr)
        clf, metrics = train_classifier(texts, scores, FeatureConfig(kind=args.features, encoder=args.encoder),
                                        args.test_fraction, args.seed)
        skipped = errors.total
        clf.meta["skipped_rows"] = skipped
        clf.meta["bad_rows"] = errors.to_dict()
        clf.save(args.output)
        print(json.dumps({**metrics, "skipped_rows": skipped}, indent=2))
        return 0
    n = score_corpus(QualityClassifier.load(args.model), args.input, args.output, args.batch_size)
    print(f"scored {n} documents → {args.output}")
    return 0


def score_corpus(clf, inputs: list[str], output: str, batch_size: int = 4096) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kollm.data.documents import SCHEMA, document_to_row, iter_rows, resolve_inputs, row_to_document

    Path(output).parent.mkdir(parents=True, exist_ok=True)
    n, batch = 0, []
    with pq.ParquetWriter(output, SCHEMA, compression="zstd") as writer:
        def flush() -> None:
            for doc, p in zip(batch, clf.predict_proba([d.text for d in batch])):
                doc.metadata["quality"] = float(p)
            writer.write_table(pa.Table.from_pylist([document_to_row(d) for d in batch], schema=SCHEMA))
            batch.clear()

        for path in resolve_inputs(inputs):
            for line, row, reason in iter_rows(path):
                if row is None:
                    print(f"{path}:{line}: skipped malformed row ({reason})", file=sys.stderr)
                    continue
                batch.append(row_to_document(row, f"{path}:{line}"))
                n += 1
                if len(batch) >= batch_size:
                    flush()
        if batch:
            flush()
    return n


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "tokenize":
        from kollm.data.tokenize import main as tokenize_main  # another module's own parser

        return int(tokenize_main(rest) or 0)
    handlers = {"curate": _curate, "report": _report, "judge": _judge, "classifier": _classifier}
    if cmd not in handlers:
        print(f"kollm data: unknown subcommand {cmd!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return handlers[cmd](rest)
