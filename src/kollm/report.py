"""`kollm report RUN_DIR [--out DIR]`: what every stage of a run did, on one page.

RUN_DIR is a recipe's work directory (stages in subdirectories, each with the `run.json` the recipe
runner writes) or a single stage's output. The report is one self-contained HTML page (plots inline
as PNG data, no network needed to view it) and a Markdown twin with the plots beside it in `img/`:

- lineage: every stage, its command, the input files it read (with hashes), when it ran, how long;
- curation: documents kept per language and step, drop reasons, example documents kept and dropped;
- tokenizer: vocabulary per language and tokens per character per language on the curated text;
- training (pretraining and every post-training stage, from `metrics.jsonl` and `phases.json`):
  next-token loss overall and per language with the phases marked, validation losses, learning rate
  and batch size, tokens/s and MFU, the mixture drawn against the mixture asked for and the share
  of cross-lingual sequences, and the stage's own curves (DPO reward accuracy and margins, GRPO
  rewards, distillation KL, ...);
- evaluation (`results.json`): scores with standard errors, cross-lingual consistency, NIAH heat maps.

nanochat's report card is the model: one file a person can read after a run, regenerated at any
time (re-running on a live run refreshes it).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

# metrics.jsonl keys that are bookkeeping, not curves
_NOT_CURVES = {"step", "time", "tokens", "phase", "micro_batches", "peak_mem_mb", "tokens_per_s", "mfu", "lr",
               "grad_norm", "epoch"}


@dataclass
class Section:
    title: str
    md: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)

    def para(self, text: str) -> None:
        self.md += [text, ""]
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, header: list[str], rows: list[list]) -> None:
        if not rows:
            return
        cells = [[_fmt(c) for c in r] for r in rows]
        self.md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        self.md += ["| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in r) + " |" for r in cells]
        self.md.append("")
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells)
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def figure(self, report: Report, name: str, png: bytes, caption: str) -> None:
        path = report.out / "img" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        self.md += [f"![{caption}](img/{name}.png)", ""]
        data = base64.b64encode(png).decode()
        self.html.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")


@dataclass
class Report:
    run_dir: Path
    out: Path
    sections: list[Section] = field(default_factory=list)


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "–" if v is None else str(v)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl rows; a line cut short by a live writer (or a crash) is skipped."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


# -- stages --------------------------------------------------------------------------------------
def find_stages(run_dir: Path) -> list[tuple[str, Path, dict | None]]:
    """(name, directory, run.json) per stage, in the order they started; a directory without
    run.json but with training metrics is a stage still running (or interrupted)."""
    def is_stage(d: Path) -> bool:
        return any((d / f).exists() for f in ("run.json", "metrics.jsonl", "results.json", "report.json",
                                              "kollm_tokenizer.json"))

    subdirs = [d for d in sorted(run_dir.iterdir()) if d.is_dir() and is_stage(d)] if run_dir.is_dir() else []
    if not subdirs and is_stage(run_dir):
        return [(run_dir.name, run_dir, _read_json(run_dir / "run.json"))]
    found = [(d.name, d, _read_json(d / "run.json")) for d in subdirs]
    return sorted(found, key=lambda s: (s[2] is None, (s[2] or {}).get("started", 0.0)))


def lineage(report: Report, stages) -> Section:
    sec = Section("Lineage")
    rows = []
    for name, d, meta in stages:
        if meta is None:
            rows.append([name, "–", "–", "–", "running or interrupted" if (d / "metrics.jsonl").exists() else "–"])
            continue
        inputs = ", ".join(f"{Path(p).name} ({h[:12]})" for p, h in (meta.get("inputs") or {}).items()) or "–"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(meta["started"])) if "started" in meta else "–"
        rows.append([name, "kollm " + " ".join(meta.get("argv", [])), inputs, started,
                     f"{meta.get('wall_time_s', float('nan')):.1f} s"])
    sec.table(["stage", "command", "input files", "started", "wall time"], rows)
    return sec


# -- curation ------------------------------------------------------------------------------------
def curation(report: Report, name: str, d: Path) -> Section | None:
    rep = _read_json(d / "report.json")
    if not isinstance(rep, dict) or "steps" not in rep:
        return None
    sec = Section(f"Curation ({name})")
    steps = rep["steps"]
    langs = sorted({lang for s in steps for lang in s["languages"]})
    first = {lang: next((s["languages"][lang].get("docs_out") for s in steps if lang in s["languages"]), 0)
             for lang in langs}
    last = {lang: next((s["languages"][lang].get("docs_out") for s in reversed(steps) if lang in s["languages"]), 0)
            for lang in langs}
    sec.table(["language", "documents read", "documents kept", "keep rate"],
              [[lang, int(first[lang] or 0), int(last[lang] or 0),
                f"{100 * (last[lang] or 0) / first[lang]:.1f} %" if first[lang] else "–"] for lang in langs])
    drops = [[s["step"], reason, lang, int(n), f"{100 * n / first[lang]:.1f} %" if first.get(lang) else "–"]
             for s in steps for reason, by_lang in sorted(s["drops"].items()) for lang, n in sorted(by_lang.items())]
    if drops:
        sec.para("Documents dropped, by step and reason (percent of the language's documents read):")
        sec.table(["step", "reason", "language", "documents", "share"], drops)
    malformed = rep.get("malformed") or {}
    if malformed:
        sec.para("Malformed input rows (counted, skipped): " + ", ".join(f"{k} {v}" for k, v in malformed.items()))
    examples = _dropped_examples(rep, d)
    if examples:
        sec.para("Examples of dropped documents:")
        sec.table(["step", "reason", "language", "text"], [[e.get("step", "–"), e.get("reason", "–"),
                                                           e.get("lang", "–"), _clip(e.get("text", ""))]
                                                          for e in examples[:12]])
    kept = _kept_examples(d)
    if kept:
        sec.para("Examples of kept documents:")
        sec.table(["language", "quality", "text"], kept)
    return sec


def _clip(text: str, n: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + " …"


def _dropped_examples(rep: dict, d: Path) -> list[dict]:
    """Samples of dropped documents, where curation kept them (in report.json or a samples folder)."""
    for key in ("dropped_examples", "dropped_samples", "excluded_examples"):
        if isinstance(rep.get(key), list):
            return rep[key]
    out = []
    for f in sorted((d / "dropped").rglob("*.jsonl"))[:50] if (d / "dropped").is_dir() else []:
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines()[:2]:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            parts = f.relative_to(d / "dropped").parts
            out.append({"step": parts[0] if len(parts) > 1 else "–", "reason": row.get("reason", f.stem),
                        "lang": row.get("lang", "–"), "text": row.get("text", "")})
    return out


def _kept_examples(d: Path, per_lang: int = 2) -> list[list]:
    files = sorted((d / "data").glob("*.parquet")) if (d / "data").is_dir() else []
    if not files:
        return []
    import pyarrow.parquet as pq

    seen: dict[str, int] = {}
    rows = []
    table = pq.read_table(files[0])
    for r in table.slice(0, 2000).to_pylist():
        lang = r.get("lang") or (r.get("metadata") or {}).get("lang", "–") if isinstance(r, dict) else "–"
        if seen.get(lang, 0) >= per_lang:
            continue
        seen[lang] = seen.get(lang, 0) + 1
        q = r.get("quality")
        rows.append([lang, q if isinstance(q, float) else "–", _clip(r.get("text", ""))])
    return rows


# -- tokenizer -----------------------------------------------------------------------------------
def tokenizer(report: Report, name: str, d: Path, meta: dict | None) -> Section | None:
    info = _read_json(d / "kollm_tokenizer.json")
    if not isinstance(info, dict) or not (d / "tokenizer.json").is_file():
        return None
    sec = Section(f"Tokenizer ({name})")
    sec.para(f"Vocabulary: {info.get('vocab_size', '–')} tokens (hash {info.get('tokenizer_hash', '–')}).")
    costs = _tokens_per_char(d, meta)
    rows = []
    for lang in info.get("languages", []):
        c = costs.get(lang["lang"], {})
        rows.append([lang["lang"], lang.get("budget"), lang.get("added"), lang.get("docs"),
                     c.get("tokens_per_char", float("nan")), c.get("chars", 0)])
    sec.table(["language", "budget", "tokens added", "training documents", "tokens / character",
               "characters measured"], rows)
    if costs:
        sec.para("Tokens per character are measured on up to 500 documents per language of the text the "
                 "tokenizer was trained on (its --input); lower is cheaper.")
    return sec


def _tokens_per_char(d: Path, meta: dict | None, per_lang: int = 500) -> dict[str, dict]:
    argv = (meta or {}).get("argv", [])
    src = argv[argv.index("--input") + 1] if "--input" in argv[:-1] else None
    if src is None or not Path(src).exists():
        return {}
    from tokenizers import Tokenizer

    from kollm.data.documents import iter_rows, resolve_inputs

    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    texts: dict[str, list[str]] = {}
    try:
        files = resolve_inputs(src)
    except FileNotFoundError:
        return {}
    for f in files:
        for _, row, _ in iter_rows(f):
            if row is None:
                continue
            lang = row.get("lang") or (row.get("metadata") or {}).get("lang")
            if lang and len(texts.setdefault(lang, [])) < per_lang:
                texts[lang].append(row["text"])
        if texts and all(len(v) >= per_lang for v in texts.values()):
            break
    out = {}
    for lang, ts in texts.items():
        n_tok = sum(len(e.ids) for e in tok.encode_batch(ts, add_special_tokens=False))
        chars = sum(len(t) for t in ts)
        out[lang] = {"tokens_per_char": n_tok / chars if chars else float("nan"), "chars": chars}
    return out


# -- training ------------------------------------------------------------------------------------
def _plot(series: dict[str, tuple[list, list]], title: str, ylabel: str, phases: list[dict] | None = None,
          log_y: bool = False, markers: set[str] = frozenset()) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.4), dpi=100)
    for label, (xs, ys) in series.items():
        if label in markers:
            ax.plot(xs, ys, "o-", label=label, markersize=4)
        else:
            ax.plot(xs, ys, label=label, linewidth=1.2)
    for ph in phases or []:
        if ph.get("start_step", 0) > 0:
            ax.axvline(ph["start_step"], color="grey", linestyle=":", linewidth=1)
        ax.text(ph.get("start_step", 0), 1.0, " " + ph["name"], transform=ax.get_xaxis_transform(), fontsize=8,
                va="top", color="grey")
    if log_y and all(min(ys) > 0 for _, ys in series.values() if ys):
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and "step" in r
           and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def training(report: Report, name: str, d: Path) -> Section | None:
    path = d / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = read_metrics(path)
    if not rows:
        return None
    sec = Section(f"Training ({name})")
    phases = _read_json(d / "phases.json") or []
    last = rows[-1]
    keys = {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    langs = sorted(k[len("loss_"):] for k in keys if k.startswith("loss_") and not k.startswith("loss_val"))
    loss_key = "ntp_loss" if "ntp_loss" in keys else "loss"
    val_rows = [r for r in rows if "val_loss" in r]
    tps = [r["tokens_per_s"] for r in rows if isinstance(r.get("tokens_per_s"), (int, float))]
    summary = [["steps", last.get("step")], ["tokens", last.get("tokens")],
               [f"final {loss_key}", last.get(loss_key)], ["final loss (objective)", last.get("loss")]]
    summary += [[f"final loss_{lang}", last.get(f"loss_{lang}")] for lang in langs]
    if val_rows:
        summary.append(["final val_loss", val_rows[-1]["val_loss"]])
        summary += [[f"final val_loss_{lang}", val_rows[-1].get(f"val_loss_{lang}")] for lang in langs
                    if f"val_loss_{lang}" in val_rows[-1]]
    if tps:
        summary.append(["mean tokens/s", sum(tps) / len(tps)])
    mfus = [r["mfu"] for r in rows if isinstance(r.get("mfu"), (int, float))]
    if mfus:
        summary.append(["mean MFU", sum(mfus) / len(mfus)])
    if "peak_mem_mb" in last:
        summary.append(["peak memory (MiB)", last["peak_mem_mb"]])
    for k, what in (("attn_sparsity", "attention matrix masked"), ("attn_block_sparsity", "128-tiles skipped")):
        if vals := [r[k] for r in rows if isinstance(r.get(k), (int, float))]:
            summary.append([f"mean {k} ({what})", sum(vals) / len(vals)])
    sec.table(["", "value"], summary)

    loss_series = {loss_key: _series(rows, loss_key)}
    loss_series |= {f"loss_{lang}": _series(rows, f"loss_{lang}") for lang in langs}
    val_keys = sorted(k for k in keys if k.startswith("val_loss"))
    loss_series |= {k: _series(rows, k) for k in val_keys}
    sec.figure(report, f"{name}-loss", _plot(loss_series, f"{name}: next-token loss per language and phase",
                                             "loss", phases, markers=set(val_keys)),
               f"{name}: next-token loss (overall and per target language), validation as markers, phases dotted")

    sched = {"lr": _series(rows, "lr")}
    sec.figure(report, f"{name}-lr", _plot(sched, f"{name}: learning rate", "lr", phases),
               f"{name}: learning rate per step")
    tok = [(r["step"], r["tokens"]) for r in rows if "tokens" in r and "step" in r]
    if len(tok) > 1:
        batch = {"tokens per step": ([s for s, _ in tok[1:]], [b - a for (_, a), (_, b) in zip(tok, tok[1:])])}
        sec.figure(report, f"{name}-batch", _plot(batch, f"{name}: global batch (tokens)", "tokens", phases),
                   f"{name}: global batch size in tokens per step (the batch-size ramp)")
    if tps:
        thr = {"tokens/s": _series(rows, "tokens_per_s")}
        sec.figure(report, f"{name}-throughput", _plot(thr, f"{name}: throughput", "tokens/s", phases),
                   f"{name}: tokens per second" + (" (MFU in the table above)" if mfus else ""))

    mix_keys = sorted(k for k in keys if k.startswith("mix_"))
    if mix_keys:
        sec.para("Mixture drawn (share of training targets per language, mean over the phase) against the mixture "
                 "the phase asked for, and the share of sequences holding more than one language:")
        rows_out = []
        for ph in phases or [{"name": last.get("phase", "–")}]:
            in_phase = [r for r in rows if r.get("phase") == ph["name"]]
            if not in_phase:
                continue
            asked = ph.get("mixture", {})
            for k in mix_keys:
                lang = k[len("mix_"):]
                drawn = sum(r.get(k, 0.0) for r in in_phase) / len(in_phase)
                rows_out.append([ph["name"], lang, drawn, asked.get(lang, float("nan"))])
            xl = [r["xlingual_seqs"] for r in in_phase if "xlingual_seqs" in r]
            if xl:
                rows_out.append([ph["name"], "cross-lingual sequences", sum(xl) / len(xl), float("nan")])
        sec.table(["phase", "language", "drawn", "asked"], rows_out)

    own = sorted(k for k in keys - _NOT_CURVES if not (k == "loss" or k == loss_key or k.startswith(("loss_", "val_loss",
                                                                                                    "mix_", "xlingual"))))
    for k in own:
        sec.figure(report, f"{name}-{k}", _plot({k: _series(rows, k)}, f"{name}: {k}", k, phases), f"{name}: {k}")
    return sec


# -- evaluation ----------------------------------------------------------------------------------
def effects(report: Report, name: str, d: Path) -> Section | None:
    """A stage's before/after table (`kollm demo score`: effects.json)."""
    res = _read_json(d / "effects.json")
    if not isinstance(res, dict) or "table" not in res:
        return None
    sec = Section("What each stage did, on held-out items")
    sec.table(res["table"]["header"], res["table"]["rows"])
    return sec


def evaluation(report: Report, name: str, d: Path) -> Section | None:
    res = _read_json(d / "results.json")
    if not isinstance(res, dict) or "results" not in res:
        return None
    sec = Section(f"Evaluation ({name})")
    sec.para(f"Model: {res.get('model', '–')}")
    rows = []
    for task, r in res["results"].items():
        for metric, v in r.get("metrics", {}).items():
            if isinstance(v, dict) and "value" in v:
                rows.append([task, metric, v["value"], v.get("stderr"), v.get("n", r.get("n")),
                             r.get("num_fewshot", "–"), r.get("split", "–")])
    sec.table(["task", "metric", "value", "± stderr", "n", "shots", "split"], rows)
    for spec, c in (res.get("consistency") or {}).items():
        sec.para(f"Cross-lingual consistency {spec} ({c.get('pairs', '–')} parallel items):")
        sec.table(["measure", "value", "count", "of"], [[k, v["value"], v["count"], v["of"]] for k, v in c.items()
                                                        if isinstance(v, dict) and "value" in v])
    for png in sorted(d.glob("niah_*.png")):
        sec.figure(report, f"{name}-{png.stem}", png.read_bytes(), f"{name}: {png.stem} accuracy by length and depth")
    return sec


# -- page ----------------------------------------------------------------------------------------
CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f2f2f2}figure{margin:1em 0}img{max-width:100%}
figcaption{font-size:.85em;color:#555}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}"""


def build(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write `report.html` and `report.md` (plots in `img/`) for RUN_DIR; returns the HTML path."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    out = Path(out) if out else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    report = Report(run_dir, out)
    stages = [s for s in find_stages(run_dir) if s[1].resolve() != out.resolve()]
    if not stages:
        raise ValueError(f"{run_dir}: no stage outputs found (run.json, metrics.jsonl, results.json, report.json "
                         "or kollm_tokenizer.json)")
    report.sections.append(lineage(report, stages))
    report.sections += [sec for sec in (effects(report, name, d) for name, d, _ in stages) if sec is not None]
    for name, d, meta in stages:
        found = (curation(report, name, d), tokenizer(report, name, d, meta), training(report, name, d),
                 evaluation(report, name, d))
        report.sections += [sec for sec in found if sec is not None]
    from kollm import __version__

    title = f"kollm report: {run_dir.resolve().name}"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    md = [f"# {title}", "", f"Run directory `{run_dir.resolve()}`, generated {stamp} by kollm {__version__}.", ""]
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>Run directory <code>{html.escape(str(run_dir.resolve()))}</code>, generated {stamp} by kollm "
            f"{__version__}.</p>"]
    for sec in report.sections:
        md += [f"## {sec.title}", "", *sec.md]
        body += [f"<h2>{html.escape(sec.title)}</h2>", *sec.html]
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")
    for name, text in (("report.md", "\n".join(md) + "\n"), ("report.html", page)):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
    return out / "report.html"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kollm report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a recipe work directory (e.g. runs/tiny-demo) or one stage's output")
    p.add_argument("--out", help="where report.html, report.md and img/ go (default: RUN_DIR/report)")
    args = p.parse_args(argv)
    page = build(args.run_dir, args.out)
    print(f"report: {page} (Markdown: {page.with_name('report.md')})")
    return 0


__all__ = ["build", "find_stages", "read_metrics", "main"]
