"""`kollm report`: the numbers on the page are the run's numbers, and the page renders in a real
browser (headless Chromium) with every image decoded."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "train"))
from synthetic import SyntheticLoader  # noqa: E402

from kollm.model.config import get_preset  # noqa: E402
from kollm.model.transformer import build_model  # noqa: E402
from kollm.report import build, read_metrics  # noqa: E402
from kollm.train.config import config_from_dict  # noqa: E402
from kollm.train.objectives.lm import LMObjective  # noqa: E402
from kollm.train.trainer import Trainer  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


class Mixed(SyntheticLoader):
    probs = {"en": 0.7, "ko": 0.3}  # what the phase asks for (PretrainLoader.probs)


class HeldOut:
    def __init__(self):
        self._b = [SyntheticLoader(seed=3).next_batch(2)]

    def batches(self):
        return self._b


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("run")
    # a pretraining stage, trained for real: two phases, validation, per-language metrics
    cfg = config_from_dict({
        "output_dir": str(work / "pretrain"), "batch": {"tokens": 4 * 32}, "optimizer": {"lr": 3e-3},
        "schedule": {"warmup_steps": 2}, "logging": {"progress": False}, "validation": {"every": 3},
        "checkpoint": {"every": 0, "export_hf": False},
        "phases": [{"name": "stable", "steps": 4, "data": {"seq_len": 32, "batch_size": 2}},
                   {"name": "anneal", "steps": 2, "data": {"seq_len": 32, "batch_size": 2}}]})
    torch.manual_seed(0)
    Trainer(cfg, build_model(get_preset("tiny")), LMObjective("xlda", langs=["en", "ko"]), Mixed(),
            val_data=HeldOut()).fit()
    (work / "pretrain" / "run.json").write_text(json.dumps(
        {"stage": "pretrain", "argv": ["pretrain", "cfg.yaml"], "started": 1.7e9 + 60, "wall_time_s": 12.5,
         "inputs": {"/x/cfg.yaml": "ab" * 32}}))
    # a curation stage (report.json as `kollm data curate` writes it)
    (work / "curate").mkdir()
    (work / "curate" / "report.json").write_text(json.dumps({
        "steps": [{"stage": "prepare", "step": "kollm: read", "languages": {"ko": {"docs_out": 400.0}}, "drops": {}},
                  {"stage": "prepare", "step": "kollm: filters", "languages": {"ko": {"docs_in": 400, "docs_out": 300}},
                   "drops": {"too_short": {"ko": 100.0}}}],
        "malformed": {"bad_json": 2}, "dropped_examples": [
            {"step": "kollm: filters", "reason": "too_short", "lang": "ko", "text": "짧은 글"}]}))
    (work / "curate" / "run.json").write_text(json.dumps({"stage": "curate", "argv": ["data", "curate"],
                                                          "started": 1.7e9, "wall_time_s": 3.0}))
    # an evaluation stage
    (work / "eval").mkdir()
    (work / "eval" / "results.json").write_text(json.dumps({
        "model": "m", "results": {"kobest_copa": {"metrics": {"acc": {"value": 0.625, "stderr": 0.0484, "n": 100}},
                                                  "n": 100, "num_fewshot": 0, "split": "test"}},
        "consistency": {"global_mmlu_en:global_mmlu_ko": {
            "pairs": 40, "P(ko✓|en✓)": {"value": 0.75, "count": 15, "of": 20}}}}))
    return work


def test_numbers_on_the_page_are_the_runs(run_dir, tmp_path):
    page = build(run_dir, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    html = page.read_text()
    # lineage in start order, with the input file's hash and the wall time
    lineage = md.split("## Lineage")[1].split("## ")[0]
    assert lineage.index("| curate |") < lineage.index("| pretrain |")
    assert "cfg.yaml (abababababab)" in lineage and "12.5 s" in lineage
    # curation: 300 of 400 Korean documents kept, 100 dropped as too short (25 %)
    assert "| ko | 400 | 300 | 75.0 % |" in md and "| kollm: filters | too_short | ko | 100 | 25.0 % |" in md
    assert "짧은 글" in md and "bad_json 2" in md
    # training: the last row of metrics.jsonl, and the per-phase drawn mixture against the asked one
    rows = read_metrics(run_dir / "pretrain" / "metrics.jsonl")
    last = rows[-1]
    assert f"| final ntp_loss | {last['ntp_loss']:.4g} |" in md
    assert f"| final val_loss | {last['val_loss']:.4g} |" in md
    assert f"| final loss_ko | {last['loss_ko']:.4g} |" in md
    stable = [r for r in rows if r["phase"] == "stable"]
    drawn = sum(r["mix_ko"] for r in stable) / len(stable)
    assert f"| stable | ko | {drawn:.4g} | 0.3 |" in md
    xl = sum(r["xlingual_seqs"] for r in stable) / len(stable)
    assert f"| stable | cross-lingual sequences | {xl:.4g} | – |" in md
    # evaluation with its standard error and the consistency measure
    assert "| kobest_copa | acc | 0.625 | 0.0484 | 100 | 0 | test |" in md
    assert "| P(ko✓\\|en✓) | 0.75 | 15 | 20 |" in md
    # self-contained: every figure inline in the HTML, and the same figures as files for the Markdown
    n_img = len(re.findall(r'<img [^>]*src="data:image/png;base64,', html))
    assert n_img == len(list((tmp_path / "report" / "img").glob("*.png"))) >= 4
    assert "http://" not in html and "https://" not in html


def test_cli_refuses_a_directory_without_runs(tmp_path, capsys):
    from kollm.cli import main

    assert main(["report", str(tmp_path)]) == 1
    assert "no stage outputs found" in capsys.readouterr().err


def _chromium() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


def test_page_renders_in_headless_chromium_with_every_image_decoded(run_dir, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium: scripts/test.sh installs Debian's `chromium` (apt-get) when run as root")
    page = build(run_dir, tmp_path / "report")
    # the report itself has no script; the test appends one that records, after load, how many images
    # decoded to a non-zero size and any script error, where --dump-dom prints it
    probe = page.read_text().replace("</body>", """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length;
  document.body.setAttribute('data-probe', `images=${imgs.length};decoded=${ok};tables=${document.querySelectorAll('table').length}`);
});
window.addEventListener('error', e => document.body.setAttribute('data-error', String(e.message)));
</script></body>""")
    probe_path = page.with_name("probe.html")
    probe_path.write_text(probe)
    out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                          "--dump-dom", probe_path.as_uri()], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    m = re.search(r'data-probe="images=(\d+);decoded=(\d+);tables=(\d+)"', out.stdout)
    assert m, out.stdout[:2000]
    images, decoded, tables = map(int, m.groups())
    assert images >= 4 and decoded == images and tables >= 5
    assert not re.search(r"<body[^>]*data-error=", out.stdout)  # no script error while loading
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1000,2000", page.as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000  # a page with content, not a blank one
