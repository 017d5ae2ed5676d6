"""Per-run curation statistics: documents and bytes in/out per step and language, drop reasons,
malformed rows, quality histograms per language.

Counting rides on datatrove's own per-step stats (`PipelineStep.stat_update`), which every
executor (local, Slurm, Ray) already merges across tasks into `<logging_dir>/stats.json`; this
file names the labels (`docs_in/ko`, `bytes_out/en`, `drop/too_short/ko`, `quality_bin/ko/7`)
and turns the merged files of a run's stages into `report.json` and `report.md`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

QUALITY_BINS = 10  # histogram over [0, 1]; bin i covers [i/10, (i+1)/10)
DROP_SAMPLES = 5  # dropped documents kept per step, reason and task
SAMPLE_CHARS = 300  # of each one's text


class DropSampler:
    """Keeps the first few documents a step drops for each reason, so a user can see what
    `too_short` or `alpha_words` removed (datatrove's exclusion writers keep all of them; a
    bounded sample is enough to judge a rule). Written per task to
    `<samples_folder>/<step>-<rank>.jsonl` and shown by the report."""

    samples_folder: str | None = None  # set by the pipeline builder; None: keep nothing

    def _start_samples(self) -> None:
        self._samples: dict[str, list[dict]] = {}

    def _sample(self, reason: str, doc: Document, lang: str) -> None:
        kept = self._samples.setdefault(reason, [])
        if len(kept) < DROP_SAMPLES:
            kept.append({"step": self.name, "reason": reason, "lang": lang,
                         "source": doc.metadata.get("source", doc.id), "text": doc.text[:SAMPLE_CHARS]})

    def _write_samples(self, rank: int) -> None:
        if not self.samples_folder or not self._samples:
            return
        folder = Path(self.samples_folder)
        folder.mkdir(parents=True, exist_ok=True)
        rows = [r for reason in sorted(self._samples) for r in self._samples[reason]]
        (folder / f"{self.name.replace(' ', '_')}-{rank:05d}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def read_drop_samples(folder: Path) -> list[dict]:
    """All tasks' samples, at most DROP_SAMPLES per (step, reason)."""
    out, count = [], defaultdict(int)
    for f in sorted(Path(folder).glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            if count[r["step"], r["reason"]] < DROP_SAMPLES:
                count[r["step"], r["reason"]] += 1
                out.append(r)
    return out


class CurationStep(DropSampler, PipelineStep):
    """A per-document step: `process(doc)` edits the document in place and returns None to keep it
    or a drop reason. The in/out/drop bookkeeping lives here once, not in every step."""

    type = "kollm"

    def process(self, doc: Document) -> str | None:
        raise NotImplementedError

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self._start_samples()
        for doc in data:
            nbytes = len(doc.text.encode("utf-8"))
            with self.track_time():
                reason = self.process(doc)
            lang = doc.metadata.get("lang", "und")
            self.stat_update(f"docs_in/{lang}")
            self.stat_update(f"bytes_in/{lang}", value=nbytes)
            if reason is not None:
                self.stat_update(f"drop/{reason}/{lang}")
                self._sample(reason, doc, lang)
                continue
            self.stat_update(f"docs_out/{lang}")
            self.stat_update(f"bytes_out/{lang}", value=len(doc.text.encode("utf-8")))
            yield doc
        self._write_samples(rank)


def quality_bin(score: float) -> int:
    return min(QUALITY_BINS - 1, max(0, int(score * QUALITY_BINS)))


def _total(value) -> float:
    return value["total"] if isinstance(value, dict) else value


def build_report(logging_dirs: dict[str, Path], malformed_examples: list[dict] | None = None) -> dict:
    """Collect `stats.json` of each stage ({stage name: logging dir}) into one report dict."""
    steps, malformed, hist = [], defaultdict(int), defaultdict(lambda: [0] * QUALITY_BINS)
    for stage, folder in logging_dirs.items():
        path = Path(folder) / "stats.json"
        if not path.is_file():
            continue
        for step in json.loads(path.read_text()):
            rows: dict[str, dict] = defaultdict(lambda: defaultdict(float))
            drops: dict[str, dict[str, float]] = defaultdict(dict)
            for label, value in step["stats"].items():
                parts = label.split("/")
                if parts[0] in ("docs_in", "bytes_in", "docs_out", "bytes_out") and len(parts) == 2:
                    rows[parts[1]][parts[0]] += _total(value)
                elif parts[0] == "drop" and len(parts) == 3:
                    drops[parts[1]][parts[2]] = _total(value)
                elif parts[0] == "malformed" and len(parts) == 2:
                    malformed[parts[1]] += int(_total(value))
                elif parts[0] == "quality_bin" and len(parts) == 3:
                    hist[parts[1]][int(parts[2])] += int(_total(value))
            if rows or drops:
                steps.append({"stage": stage, "step": step["name"], "languages": {k: dict(v) for k, v in rows.items()},
                              "drops": dict(drops)})
    return {"steps": steps, "malformed": dict(malformed), "malformed_examples": malformed_examples or [],
            "quality_histogram": {lang: h for lang, h in sorted(hist.items())}}


def render_markdown(report: dict) -> str:
    out = ["# Curation report", "", "| stage | step | lang | docs in | docs out | bytes in | bytes out |",
           "|---|---|---|---:|---:|---:|---:|"]
    for s in report["steps"]:
        for lang, r in sorted(s["languages"].items()):
            out.append(f"| {s['stage']} | {s['step']} | {lang} | {int(r.get('docs_in', 0))} | "
                       f"{int(r.get('docs_out', 0))} | {int(r.get('bytes_in', 0))} | {int(r.get('bytes_out', 0))} |")
    out += ["", "## Drop reasons", "", "| step | reason | lang | docs |", "|---|---|---|---:|"]
    for s in report["steps"]:
        for reason, by_lang in sorted(s["drops"].items()):
            for lang, n in sorted(by_lang.items()):
                out.append(f"| {s['step']} | {reason} | {lang} | {int(n)} |")
    samples = report.get("dropped_samples") or []
    if samples:
        out += ["", f"## Dropped documents (first {DROP_SAMPLES} per step and reason)", ""]
        for r in samples:
            text = " ".join(r["text"].split())
            out.append(f"- {r['step']} / {r['reason']} ({r['lang']}, {r['source']}): {text[:160]}"
                       + ("…" if len(text) > 160 else ""))
    out += ["", "## Malformed input rows", ""]
    out += [f"- {reason}: {n}" for reason, n in sorted(report["malformed"].items())] or ["none"]
    out += [f"  - {e['file']}:{e['line']}: {e['reason']}" for e in report["malformed_examples"][:20]]
    out += ["", "## Quality histogram (kept documents; bins of 0.1 over [0, 1])", ""]
    for lang, h in report["quality_histogram"].items():
        out.append(f"- {lang}: {' '.join(str(x) for x in h)}")
    return "\n".join(out) + "\n"
