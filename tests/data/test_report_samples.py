"""`data curate` keeps a bounded sample of the documents each step drops, per reason, and `data
report` shows them; datatrove's INFO logs stay off the console unless --verbose."""

import json
import random

import yaml

from kollm.cli import main
from kollm.data.stats import DROP_SAMPLES, SAMPLE_CHARS

WORDS = ("the model reads many kinds of text and learns which word tends to follow which other word in "
         "long documents written by people about science history sport music and daily life").split()


def _corpus(d):
    rows = [{"id": f"ok-{i}", "lang": "en", "text": " ".join(random.Random(i).choices(WORDS, k=60)) + "."}
            for i in range(12)]
    rows += [{"id": f"short-{i}", "lang": "en", "text": f"too short number {i}"} for i in range(8)]
    rows += [dict(rows[0], id="copy-0")]  # an exact duplicate of ok-0
    (d / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_dropped_documents_are_sampled_and_reported_and_logs_are_quiet(tmp_path, capfd):
    _corpus(tmp_path)
    cfg = {"inputs": [str(tmp_path / "in.jsonl")], "output": str(tmp_path / "out"), "workers": 1,
           "steps": ["normalize", "filters", "dedup"], "dedup": {"near": False},
           "filters": {"all": {"min_units": 10, "min_mean_word_len": None, "min_stop_words": None}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    capfd.readouterr()
    assert main(["data", "curate", "--config", str(tmp_path / "c.yaml")]) == 0
    err = capfd.readouterr().err
    assert "INFO" not in err and "Launching pipeline" not in err, err[:2000]
    assert main(["data", "report", str(tmp_path / "out")]) == 0
    out = capfd.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    by = {}
    for r in report["dropped_samples"]:
        by.setdefault((r["step"], r["reason"]), []).append(r)
    assert len(by["filters", "too_short"]) == DROP_SAMPLES  # 8 dropped, 5 kept as samples
    assert by["filters", "too_short"][0]["text"] == "too short number 0"
    first = json.loads((tmp_path / "in.jsonl").read_text().splitlines()[0])["text"]
    assert [r["text"] for r in by["apply decisions", "exact_dup"]] == [first[:SAMPLE_CHARS]]  # one copy dropped
    assert "## Dropped documents" in out and "filters / too_short (en, " in out and "too short number 0" in out
    # --verbose: datatrove's own logs on the console again
    assert main(["data", "curate", "--config", str(tmp_path / "c.yaml"), "--output", str(tmp_path / "v"),
                 "--verbose"]) == 0
    assert "Launching pipeline" in capfd.readouterr().err
