"""`kollm data curate`: the curation pipeline as four datatrove stages.

1. prepare (N tasks): read → normalize → langid → filters → quality → write prepared Parquet
   (+ text hash) → MinHash signatures.                                    [datatrove + ours]
2. buckets (num_buckets tasks): datatrove's MinhashDedupBuckets finds signature matches.
3. decide (1 task): exact groups and MinHash clusters keep their smallest `source`; then the
   per-language top fraction by quality survives (Trillion: 80 % en / 50 % others).
4. write (N tasks): apply the decisions, write `<output>/data/<task>.parquet`.
Every decision is keyed on documents' `source` ("path:line"), never on task numbers, so 1 and N
tasks give the same documents. The same stages run under datatrove's Local, Slurm or Ray executor
(`executor:` in the config; docs/curation.md); finished tasks are skipped on a rerun.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import DocumentsPipeline
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets

from kollm import __version__
from kollm.argtypes import config_text
from kollm.data.dedup import DedupConfig, decide_duplicates, read_duplicate_pairs, signature_step, text_hash
from kollm.data.documents import DocumentReader, ParquetDocWriter, read_parquet_documents
from kollm.data.filters import HeuristicFilter, default_filter_configs, make_filter_config
from kollm.data.langid import LangIdConfig, LanguageId
from kollm.data.normalize import Normalize
from kollm.data.quality import QualityConfig, QualityScore, select_top
from kollm.data.stats import DropSampler, build_report, quality_bin, read_drop_samples, render_markdown

STEPS = ("normalize", "langid", "filters", "quality", "dedup", "keep")
REASONS = ("exact_dup", "near_dup", "quality_percentile")
STAGES = ("prepare", "buckets", "decide", "write")
RAY_RETRIES = {"max_restarts": 0, "max_task_retries": 0}  # Ray's defaults, pinned: see _run_ray_stages


class TasksIncomplete(ValueError):
    """Some tasks of a stage did not complete (Ray); a ValueError, so the CLI prints it as one line."""


def _strict(cls, data: dict | None, where: str):
    data = data or {}
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in names:
            raise KeyError(f"{where}: unknown key {key!r} (known: {sorted(names)})")
    return cls(**data)


@dataclass
class LangIdSection:
    keep: list[str] | None = None
    min_score: float = 0.0
    detector: dict = field(default_factory=dict)  # LangIdConfig fields


@dataclass
class CurateConfig:
    inputs: list[str]
    output: str
    executor: str = "local"  # local | slurm | ray
    workers: int = 1
    tasks: int | None = None  # tasks for the prepare and write stages; default = workers
    executor_options: dict = field(default_factory=dict)  # passed to datatrove's Slurm/Ray executor
    ray_address: str | None = None  # ray: a running cluster; None: RAY_ADDRESS, else a new local one
    steps: list[str] = field(default_factory=lambda: list(STEPS))
    normalize: dict = field(default_factory=dict)
    langid: dict = field(default_factory=dict)
    filters: dict = field(default_factory=dict)  # {lang | "all": {FilterConfig overrides}}
    dedup: dict = field(default_factory=dict)
    quality: dict = field(default_factory=dict)
    limit: int = -1  # documents per task (debugging)

    def __post_init__(self) -> None:
        if isinstance(self.inputs, str):
            self.inputs = [self.inputs]
        if self.executor not in ("local", "slurm", "ray"):
            raise ValueError(f"executor must be local|slurm|ray, got {self.executor!r}")
        for s in self.steps:
            if s not in STEPS:
                raise ValueError(f"steps: unknown step {s!r} (known: {list(STEPS)})")
        if self.workers < 1 or (self.tasks is not None and self.tasks < 1):
            raise ValueError("workers and tasks must be >= 1")
        self.n_tasks = self.tasks or self.workers
        self.langid_cfg = _strict(LangIdSection, self.langid, "langid")
        self.detector_cfg = _strict(LangIdConfig, self.langid_cfg.detector, "langid.detector")
        self.dedup_cfg = _strict(DedupConfig, self.dedup, "dedup")
        self.quality_cfg = _strict(QualityConfig, self.quality, "quality")
        if set(self.normalize) - {"fold_fullwidth"}:
            raise KeyError(f"normalize: unknown key {sorted(set(self.normalize) - {'fold_fullwidth'})[0]!r}")
        self.filter_cfgs = default_filter_configs()
        common = self.filters.get("all", {})
        for lang in set(self.filter_cfgs) | set(self.filters) - {"all"}:
            base = self.filter_cfgs.get(lang, self.filter_cfgs["other"])
            self.filter_cfgs[lang] = make_filter_config({**common, **self.filters.get(lang, {})}, base)

    @classmethod
    def from_dict(cls, data: dict) -> CurateConfig:
        return _strict(cls, data, "curate config")


def load_config(path: str | None, overrides: dict | None = None) -> CurateConfig:
    """YAML config (optional) with top-level overrides (None values are ignored)."""
    data: dict = {}
    if path:
        import yaml

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"curate config not found: {path}")
        data = yaml.safe_load(config_text(p)) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for key in ("inputs", "output"):
        if not data.get(key):
            raise ValueError(f"curate: {key!r} is required (in the config or as a flag)")
    return CurateConfig.from_dict(data)


class _PrepareWriter(ParquetDocWriter):
    """Prepared Parquet plus the exact-dedup hash; its row order is the MinHash doc index."""

    name = "write prepared"

    def __init__(self, folder: str):
        super().__init__(folder, extra_columns={"text_hash": pa.uint64()})

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        def hashed():
            for doc in data:
                doc.metadata["text_hash"] = text_hash(doc.text)
                yield doc

        yield from super().run(hashed(), rank, world_size)


class Decide(PipelineStep):
    """Stage 3 (one task): dedup clusters and the per-language percentile keep, written as
    `<work>/decisions/<task>.npz` (doc index, reason code) and `keep_thresholds.json`."""

    type = "kollm"
    name = "decide"

    def __init__(self, work: str, n_tasks: int, dedup: DedupConfig, keep: dict[str, float] | None):
        super().__init__()
        self.work, self.n_tasks, self.dedup, self.keep = work, n_tasks, dedup, keep

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        work = Path(self.work)
        cols = [pq.read_table(work / "prepared" / f"{t:05d}.parquet",
                              columns=["source", "lang", "quality", "text_hash"]).to_pydict()
                for t in range(self.n_tasks)]
        sources = [c["source"] for c in cols]
        hashes = [c["text_hash"] for c in cols] if self.dedup.exact else None
        pairs = read_duplicate_pairs(str(work / "minhash" / "buckets")) if self.dedup.near else []
        drops = decide_duplicates(sources, hashes, pairs)
        thresholds = {}
        if self.keep is not None:
            by_lang: dict[str, list[tuple[float, str, int, int]]] = {}
            for t, c in enumerate(cols):
                for i, (src, lang, q) in enumerate(zip(c["source"], c["lang"], c["quality"])):
                    if (t, i) not in drops and q is not None:
                        by_lang.setdefault(lang or "und", []).append((q, src, t, i))
            for lang, items in sorted(by_lang.items()):
                frac = self.keep.get(lang, self.keep["default"])
                kept = select_top([(q, s) for q, s, _, _ in items], frac)
                for _, s, t, i in items:
                    if s not in kept:
                        drops[(t, i)] = "quality_percentile"
                kept_q = [q for q, s, _, _ in items if s in kept]
                thresholds[lang] = {"fraction": frac, "candidates": len(items), "kept": len(kept_q),
                                    "min_kept_quality": min(kept_q) if kept_q else None}
        (work / "decisions").mkdir(parents=True, exist_ok=True)
        for t in range(self.n_tasks):
            mine = sorted((i, REASONS.index(r)) for (tt, i), r in drops.items() if tt == t)
            np.savez(work / "decisions" / f"{t:05d}.npz", index=np.array([i for i, _ in mine], dtype=np.int64),
                     reason=np.array([r for _, r in mine], dtype=np.uint8))
        (work / "keep_thresholds.json").write_text(json.dumps(thresholds, indent=2))
        for r in drops.values():
            self.stat_update(r)
        return
        yield  # a generator with no output, as datatrove expects of a step


class ApplyDecisions(DropSampler, PipelineStep):
    """Stage 4: stream this task's prepared documents, drop the decided ones, pass on the rest."""

    type = "kollm"
    name = "apply decisions"

    def __init__(self, work: str):
        super().__init__()
        self.work = work

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        work = Path(self.work)
        dec = np.load(work / "decisions" / f"{rank:05d}.npz")
        drops = dict(zip(dec["index"].tolist(), dec["reason"].tolist()))
        self._start_samples()
        for i, doc in enumerate(read_parquet_documents(str(work / "prepared" / f"{rank:05d}.parquet"))):
            doc.metadata.pop("text_hash", None)
            lang, nbytes = doc.metadata.get("lang", "und"), len(doc.text.encode("utf-8"))
            self.stat_update(f"docs_in/{lang}")
            self.stat_update(f"bytes_in/{lang}", value=nbytes)
            if i in drops:
                self.stat_update(f"drop/{REASONS[drops[i]]}/{lang}")
                self._sample(REASONS[drops[i]], doc, lang)
                continue
            self.stat_update(f"docs_out/{lang}")
            self.stat_update(f"bytes_out/{lang}", value=nbytes)
            if doc.metadata.get("quality") is not None:
                self.stat_update(f"quality_bin/{lang}/{quality_bin(doc.metadata['quality'])}")
            yield doc
        self._write_samples(rank)


def build_stages(cfg: CurateConfig) -> dict[str, list[PipelineStep]]:
    out = Path(cfg.output).resolve()
    work = out / "work"
    steps = set(cfg.steps)
    prepare: list[PipelineStep] = [DocumentReader(cfg.inputs, errors_folder=str(work / "errors"), limit=cfg.limit)]
    if "normalize" in steps:
        prepare.append(Normalize(**cfg.normalize))
    if "langid" in steps:
        prepare.append(LanguageId(cfg.detector_cfg, cfg.langid_cfg.keep, cfg.langid_cfg.min_score))
    if "filters" in steps:
        prepare.append(HeuristicFilter(cfg.filter_cfgs))
    if "quality" in steps:
        prepare.append(QualityScore(cfg.quality_cfg))
    prepare.append(_PrepareWriter(str(work / "prepared")))
    dedup = dataclasses.replace(cfg.dedup_cfg, exact=cfg.dedup_cfg.exact and "dedup" in steps,
                                near=cfg.dedup_cfg.near and "dedup" in steps)
    stages: dict[str, list[PipelineStep]] = {"prepare": prepare}
    if dedup.near:
        prepare.append(signature_step(str(work / "minhash" / "sigs"), dedup))
        stages["buckets"] = [MinhashDedupBuckets(input_folder=str(work / "minhash" / "sigs"),
                                                 output_folder=str(work / "minhash" / "buckets"),
                                                 config=dedup.minhash())]
    keep = cfg.quality_cfg.fractions if {"keep", "quality"} <= steps else None
    stages["decide"] = [Decide(str(work), cfg.n_tasks, dedup, keep)]
    stages["write"] = [ApplyDecisions(str(work)), ParquetDocWriter(str(out / "data"))]
    for step in (st for stage in stages.values() for st in stage):
        if isinstance(step, DropSampler):
            step.samples_folder = str(work / "dropped")
    return stages


def console_logs(verbose: bool) -> None:
    """datatrove logs through loguru at INFO (hundreds of lines per stage): on the console only
    warnings and errors unless `verbose`; every task's full log stays in OUTPUT/logs/<stage>/."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="DEBUG" if verbose else "WARNING")


class QuietLocalExecutor(LocalPipelineExecutor):
    """datatrove's local executor; its tasks print to the console only when `verbose` (datatrove
    sends a task's console log at ERROR level when its local_rank is not 0)."""

    verbose = False

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        try:
            return super()._run_for_rank(rank, local_rank if self.verbose else max(local_rank, 1), node_rank)
        finally:
            console_logs(self.verbose)  # datatrove restores its own INFO console logger after a task


def _executor(cfg: CurateConfig, name: str, pipeline: list[PipelineStep], tasks: int, depends,
              verbose: bool = False):
    logging_dir = str(Path(cfg.output).resolve() / "logs" / name)
    if cfg.executor == "local":
        executor = QuietLocalExecutor(pipeline, tasks=tasks, workers=min(cfg.workers, tasks),
                                      logging_dir=logging_dir, depends=depends)
        executor.verbose = verbose
        return executor
    try:
        if cfg.executor == "slurm":
            from datatrove.executor import SlurmPipelineExecutor

            return SlurmPipelineExecutor(pipeline, tasks=tasks, workers=min(cfg.workers, tasks),
                                         logging_dir=logging_dir, depends=depends, job_name=f"kollm-curate-{name}",
                                         **cfg.executor_options)
        from datatrove.executor import RayPipelineExecutor

        if importlib.util.find_spec("ray") is None:  # datatrove would only find out when run
            raise ValueError("executor 'ray' needs the 'ray' package: pip install 'kollm[ray]'")
        # Retries are datatrove's alone (a crashed task resubmitted up to 3 times, _run_ray_stages):
        # Ray restarting the actor and re-running its method too would multiply them.
        options = dict(cfg.executor_options)
        options["ray_remote_kwargs"] = {**RAY_RETRIES, **(options.get("ray_remote_kwargs") or {})}
        return RayPipelineExecutor(pipeline, tasks=tasks, workers=cfg.workers, logging_dir=logging_dir,
                                   depends=depends, **options)
    except ModuleNotFoundError as e:
        raise ValueError(f"executor {cfg.executor!r} needs the {e.name!r} package (pip install {e.name})") from None
    except TypeError as e:  # a missing or unknown executor argument, e.g. Slurm's partition and time
        raise ValueError(f"executor_options for datatrove's {cfg.executor} executor: {e} "
                         "(docs/curation.md shows a Slurm example)") from None


def write_report(output: str) -> dict:
    """Merge the stages' stats and the malformed-row log into report.json / report.md."""
    out = Path(output)
    examples = []
    for path in sorted((out / "work" / "errors").glob("*.jsonl")):
        examples += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    report = build_report({s: out / "logs" / s for s in STAGES}, examples)
    report["dropped_samples"] = read_drop_samples(out / "work" / "dropped")
    thresholds = out / "work" / "keep_thresholds.json"
    report["keep_thresholds"] = json.loads(thresholds.read_text()) if thresholds.is_file() else {}
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (out / "report.md").write_text(render_markdown(report), encoding="utf-8")
    return report


def _fingerprint(cfg: CurateConfig, files: list[str]) -> str:
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in ("workers", "executor",
                                                                                               "executor_options",
                                                                                               "ray_address")}
    stat = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps([__version__, fields, stat], sort_keys=True, default=str).encode()).hexdigest()


def _claim_output(cfg: CurateConfig, files: list[str]) -> None:
    """Finished tasks are skipped on a rerun (resume), but only for the same config and inputs:
    a changed config or input clears this directory's stale stages first."""
    out = Path(cfg.output)
    record, fingerprint = out / "curate.json", _fingerprint(cfg, files)
    if record.is_file() and json.loads(record.read_text()).get("fingerprint") != fingerprint:
        for sub in ("work", "logs", "data"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"fingerprint": fingerprint, "inputs": files}, indent=2))


def _run_ray_stages(cfg: CurateConfig, executors: dict) -> None:
    """Run the Ray stages one after another and stop at the first with unfinished tasks.

    datatrove's RayPipelineExecutor resubmits a task whose worker died (Ray's WorkerCrashedError /
    RayActorError: a killed process, a lost node) up to 3 times within the run, and never one that
    raised; Ray's own retries stay off (actor `max_restarts`/`max_task_retries` 0, Ray's defaults),
    so a task is re-executed by datatrove alone. A task that still failed only leaves a warning, and
    the next stage would then wait for it forever (datatrove polls its dependency every 2 minutes):
    here the run fails instead, naming the tasks; the same command again skips the completed tasks
    (their `logs/<stage>/completions/` markers) and runs the rest."""
    for name, executor in executors.items():
        executor.run()
        missing = executor.get_incomplete_ranks(skip_completed=True)
        if missing:
            logs = Path(cfg.output).resolve() / "logs" / name / "logs"
            raise TasksIncomplete(f"curate (ray): stage {name!r}: {len(missing)} of {executor.world_size} tasks "
                                  f"did not complete: {missing} (logs: {logs}/task_<rank>.log); run the same "
                                  "command again to resume: completed tasks are skipped")


def run_curation(cfg: CurateConfig, dry_run: bool = False, verbose: bool = False) -> dict | None:
    """Run (local, ray) or submit (slurm) the stages; returns the report when they ran here.
    `dry_run` (Slurm only): write the sbatch scripts to `<output>/slurm/` instead of submitting.
    `verbose`: datatrove's INFO logs on the console too (they always go to OUTPUT/logs/)."""
    if dry_run and cfg.executor != "slurm":
        raise ValueError(f"--dry-run writes Slurm scripts: it needs --executor slurm, not {cfg.executor!r}")
    console_logs(verbose)
    stages = build_stages(cfg)
    _claim_output(cfg, stages["prepare"][0].files)
    executor, executors = None, {}
    for name, pipeline in stages.items():
        tasks = cfg.dedup_cfg.num_buckets if name == "buckets" else 1 if name == "decide" else cfg.n_tasks
        executor = executors[name] = _executor(cfg, name, pipeline, tasks, executor, verbose)
    if dry_run:
        from kollm.data.slurm_dry_run import record_sbatch

        with record_sbatch(Path(cfg.output) / "slurm"):
            executor.run()
        return None
    if cfg.executor == "ray":
        import ray

        if not ray.is_initialized():  # datatrove expects a connected driver
            ray.init(address=cfg.ray_address, log_to_driver=False)
        _run_ray_stages(cfg, executors)
    else:
        executor.run()
    # Ray runs the stages to the end in this process (Slurm only submits them): report as locally.
    return write_report(cfg.output) if cfg.executor in ("local", "ray") else None

