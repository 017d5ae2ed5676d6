"""End-to-end curation on real reviews + news: 2 workers give exactly the 1-worker output; the
report counts malformed rows, drops and per-language keeps; the CLI dispatches."""

import json
import sys
import types
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from kollm.cli import main as kollm_main
from kollm.data.pipeline import CurateConfig, run_curation

DATA = Path("/work/shared/data/corpus")
needs_data = pytest.mark.skipif(not (DATA / "nsmc-reviews.jsonl").is_file(), reason="shared dev data absent")
LOOSE = {"all": {"min_units": 3, "min_mean_word_len": None, "min_stop_words": None}}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    reviews = (DATA / "nsmc-reviews.jsonl").read_text(encoding="utf-8").splitlines()[:1600]
    for k in range(4):
        (d / f"reviews_{k}.jsonl").write_text("\n".join(reviews[k * 400:(k + 1) * 400]) + "\n", encoding="utf-8")
    english = (DATA / "ko-en-parallel" / "korean-english-park.dev.en").read_text(encoding="utf-8").splitlines()
    rows = [{"id": f"en-{i}", "text": t} for i, t in enumerate(english[:300])]
    rows += [{"id": f"en-copy-{i}", "text": t} for i, t in enumerate(english[:20])]  # planted exact copies
    (d / "news_en.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    (d / "broken.jsonl").write_bytes(b'{"text": "fine row here for sure"}\n{"text": \n{"no": "text"}\n'
                                     b'{"text": "\xff\xfe"}\n')
    return d


def _run(corpus: Path, out: Path, workers: int) -> list[dict]:
    cfg = CurateConfig.from_dict({"inputs": [str(corpus)], "output": str(out), "workers": workers,
                                  "filters": LOOSE})
    run_curation(cfg)
    rows = [r for f in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return sorted(rows, key=lambda r: r["source"])


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return {w: (_run(corpus, base / f"w{w}", w), base / f"w{w}") for w in (1, 2)}


@needs_data
def test_two_workers_equal_one_worker(runs):
    one, two = runs[1][0], runs[2][0]
    assert len(one) > 500
    assert one == two
    assert len(list((runs[2][1] / "data").glob("*.parquet"))) == 2


@needs_data
def test_output_is_deduplicated_and_kept_per_language(runs):
    rows, out = runs[1]
    texts = [r["text"] for r in rows]
    assert len(texts) == len(set(texts))
    assert not any(r["id"].startswith("en-copy-") for r in rows)  # later copies lose to originals
    langs = {r["lang"] for r in rows}
    assert {"ko", "en"} <= langs
    thresholds = json.loads((out / "work" / "keep_thresholds.json").read_text())
    for lang, t in thresholds.items():
        expected = 0.8 if lang == "en" else 0.5
        assert t["fraction"] == expected
        assert t["kept"] == sum(r["lang"] == lang for r in rows) == -(-t["candidates"] * expected // 1)
        assert all(r["quality"] >= t["min_kept_quality"] for r in rows if r["lang"] == lang)


@needs_data
def test_report(runs):
    rows, out = runs[2]
    report = json.loads((out / "report.json").read_text())
    assert report["malformed"] == {"bad_json": 1, "no_text": 1, "invalid_utf8": 1}
    assert [(Path(e["file"]).name, e["line"]) for e in report["malformed_examples"]] == [
        ("broken.jsonl", 2), ("broken.jsonl", 3), ("broken.jsonl", 4)]
    steps = {s["step"]: s for s in report["steps"]}
    apply = steps["kollm: apply decisions"]
    assert apply["drops"]["exact_dup"]["en"] >= 15  # 20 planted copies, a few of them filtered earlier
    assert sum(v["docs_out"] for v in apply["languages"].values()) == len(rows)
    read = steps["kollm: read"]["languages"]["und"]
    assert read["docs_out"] == 1600 + 320 + 1
    for s in report["steps"]:
        for lang, r in s["languages"].items():
            if "docs_in" in r:
                dropped = sum(by_lang.get(lang, 0) for by_lang in s["drops"].values())
                assert r["docs_in"] - r.get("docs_out", 0) == dropped, (s["step"], lang)
    hist = report["quality_histogram"]
    assert sum(hist["ko"]) == sum(r["lang"] == "ko" for r in rows)
    assert "| write | kollm: apply decisions | ko |" in (out / "report.md").read_text()


@needs_data
def test_cli_curate_report_and_errors(corpus, tmp_path, capsys):
    cfg = {"inputs": [str(corpus / "news_en.jsonl")], "output": str(tmp_path / "out"), "workers": 1,
           "filters": LOOSE, "quality": {"keep": "anneal"}, "dedup": {"near": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert kollm_main(["data", "curate", "--config", str(tmp_path / "c.yaml")]) == 0
    kept = pq.read_table(tmp_path / "out" / "data" / "00000.parquet").num_rows
    thresholds = json.loads((tmp_path / "out" / "work" / "keep_thresholds.json").read_text())
    assert kept == thresholds["en"]["kept"] and thresholds["en"]["fraction"] == 0.2
    assert kollm_main(["data", "report", str(tmp_path / "out")]) == 0
    assert "# Curation report" in capsys.readouterr().out
    (tmp_path / "out" / "logs" / "write" / "stats.json").unlink()  # as if its tasks had failed
    assert kollm_main(["data", "report", str(tmp_path / "out")]) == 1
    assert "stage(s) write have not finished" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**cfg, "dedup": {"buckets": 3}}))
    assert kollm_main(["data", "curate", "--config", str(tmp_path / "bad.yaml")]) == 1
    assert "'buckets'" in capsys.readouterr().err


def test_tokenize_is_dispatched_untouched(monkeypatch):
    seen = []
    fake = types.ModuleType("kollm.data.tokenize")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "kollm.data.tokenize", fake)
    assert kollm_main(["data", "tokenize", "--whatever", "x", "--help"]) == 0
    assert seen == [["--whatever", "x", "--help"]]


def test_same_config_builds_slurm_stages(tmp_path):
    from datatrove.executor import SlurmPipelineExecutor

    from kollm.data.pipeline import STAGES, _executor, build_stages

    (tmp_path / "a.jsonl").write_text('{"text": "hello"}\n')
    cfg = CurateConfig.from_dict({"inputs": [str(tmp_path)], "output": str(tmp_path / "o"), "executor": "slurm",
                                  "tasks": 8, "workers": 4,
                                  "executor_options": {"partition": "cpu", "time": "1:00:00"}})
    stages, executor, tasks = build_stages(cfg), None, {}
    for name, pipeline in stages.items():  # constructed, not submitted
        executor = _executor(cfg, name, pipeline, {"buckets": 14, "decide": 1}.get(name, 8), executor)
        assert isinstance(executor, SlurmPipelineExecutor)
        tasks[name] = executor.tasks
    assert list(stages) == list(STAGES) and tasks == {"prepare": 8, "buckets": 14, "decide": 1, "write": 8}
    assert executor.depends.depends.depends.pipeline[0].name == "read"


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(KeyError, match="min_wordz"):
        CurateConfig.from_dict({"inputs": ["x"], "output": "o", "filters": {"ko": {"min_wordz": 1}}})
    with pytest.raises(KeyError, match="colour"):
        CurateConfig.from_dict({"inputs": ["x"], "output": "o", "colour": 1})
    with pytest.raises(ValueError, match="steps"):
        CurateConfig.from_dict({"inputs": ["x"], "output": "o", "steps": ["normalise"]})
    with pytest.raises(KeyError, match="detector"):
        CurateConfig.from_dict({"inputs": ["x"], "output": "o", "langid": {"detector": {"hangul": 1}}})
    # checked before any worker starts (each would print its own traceback)
    with pytest.raises(FileNotFoundError, match="quality.classifier: .*nope is not a classifier directory"):
        CurateConfig.from_dict({"inputs": ["x"], "output": "o",
                                "quality": {"scorer": "classifier", "classifier": str(tmp_path / "nope")}})


def test_executor_mistakes_are_one_line_errors(tmp_path):
    from kollm.data.pipeline import _executor

    slurm = CurateConfig.from_dict({"inputs": ["x"], "output": str(tmp_path / "o"), "executor": "slurm"})
    with pytest.raises(ValueError, match="executor_options for datatrove's slurm executor: .*partition"):
        _executor(slurm, "prepare", [], 1, None)
    ray = CurateConfig.from_dict({"inputs": ["x"], "output": str(tmp_path / "o"), "executor": "ray"})
    try:
        import ray as _  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(ValueError, match="executor 'ray' needs the 'ray' package"):
            _executor(ray, "prepare", [], 1, None)


@needs_data
def test_classifier_scores_in_the_pipeline(corpus, tmp_path):
    from kollm.data.classifier import FeatureConfig, QualityClassifier, train_classifier

    news = (DATA / "ko-en-parallel" / "korean-english-park.test.ko").read_text(encoding="utf-8").splitlines()[:60]
    reviews = [json.loads(x)["text"] for x in (DATA / "nsmc-reviews.jsonl").read_text().splitlines()[-60:]]
    clf, _ = train_classifier(news + reviews, [4] * 60 + [1] * 60, FeatureConfig(n_features=2**16))
    clf.save(str(tmp_path / "clf"))
    cfg = CurateConfig.from_dict({
        "inputs": [str(corpus / "reviews_0.jsonl"), str(corpus / "news_en.jsonl")], "output": str(tmp_path / "o"),
        "filters": LOOSE, "steps": ["normalize", "langid", "filters", "quality", "keep"],
        "quality": {"scorer": "classifier", "classifier": str(tmp_path / "clf"), "batch_size": 64,
                    "keep": {"default": 0.5}}})
    run_curation(cfg)
    rows = pq.read_table(tmp_path / "o" / "data" / "00000.parquet").to_pylist()
    expected = QualityClassifier.load(str(tmp_path / "clf")).predict_proba([r["text"] for r in rows])
    assert [r["quality"] for r in rows] == pytest.approx(expected.tolist(), rel=1e-5)
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    quality_step = next(s for s in report["steps"] if s["step"] == "kollm: quality")
    assert quality_step["languages"]["ko"]["docs_in"] == quality_step["languages"]["ko"]["docs_out"] > 100


def test_rerun_resumes_same_config_and_restarts_a_changed_one(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    texts = [f"문서 번호 {i}는 서로 다른 내용을 담고 있습니다 {'가나다라마바사'[i % 7] * (i % 5 + 1)}" for i in range(40)]
    (src / "a.jsonl").write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in texts) + "\n")
    base = {"inputs": [str(src)], "output": str(tmp_path / "o"), "filters": {"all": {"min_units": 1}},
            "dedup": {"near": False, "exact": False}}
    run_curation(CurateConfig.from_dict({**base, "quality": {"keep": {"default": 0.5}}}))
    marker = tmp_path / "o" / "work" / "prepared" / "00000.parquet"
    mtime = marker.stat().st_mtime_ns
    run_curation(CurateConfig.from_dict({**base, "quality": {"keep": {"default": 0.5}}}))
    assert marker.stat().st_mtime_ns == mtime  # same config: finished tasks skipped
    run_curation(CurateConfig.from_dict({**base, "quality": {"keep": {"default": 0.25}}}))
    assert marker.stat().st_mtime_ns != mtime  # changed config: stale stages cleared and rerun
    kept = pq.read_table(tmp_path / "o" / "data" / "00000.parquet").num_rows
    assert kept == json.loads((tmp_path / "o" / "work" / "keep_thresholds.json").read_text())["ko"]["kept"] == 10
