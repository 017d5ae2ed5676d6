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


class CurationStep(PipelineStep):
    """A per-document step: `process(doc)` edits the document in place and returns None to keep it
    or a drop reason. The in/out/drop bookkeeping lives here once, not in every step."""

    type = "kollm"

    def process(self, doc: Document) -> str | None:
        raise NotImplementedError

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            nbytes = len(doc.text.encode("utf-8"))
            with self.track_time():
                reason = self.process(doc)
            lang = doc.metadata.get("lang", "und")
            self.stat_update(f"docs_in/{lang}")
            self.stat_update(f"bytes_in/{lang}", value=nbytes)
            if reason is not None:
                self.stat_update(f"drop/{reason}/{lang}")
                continue
            self.stat_update(f"docs_out/{lang}")
            self.stat_update(f"bytes_out/{lang}", value=len(doc.text.encode("utf-8")))
            yield doc


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
    out += ["", "## Malformed input rows", ""]
    out += [f"- {reason}: {n}" for reason, n in sorted(report["malformed"].items())] or ["none"]
    out += [f"  - {e['file']}:{e['line']}: {e['reason']}" for e in report["malformed_examples"][:20]]
    out += ["", "## Quality histogram (kept documents; bins of 0.1 over [0, 1])", ""]
    for lang, h in report["quality_histogram"].items():
        out.append(f"- {lang}: {' '.join(str(x) for x in h)}")
    return "\n".join(out) + "\n"
