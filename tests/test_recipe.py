import json

import pytest

from kollm.recipe import load_recipe, run_recipe


def _write(tmp_path, stages):
    import yaml

    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"workdir": str(tmp_path / "w"), "stages": stages}))
    return p


def test_stages_run_then_skip_then_cascade(tmp_path):
    stages = [
        {"name": "a", "run": "model info", "args": ["tiny", "--json"]},
        {"name": "b", "run": "model info", "args": ["tiny", "--seq-len", "64"]},
    ]
    r = load_recipe(_write(tmp_path, stages))
    assert run_recipe(r, log=lambda *_: None) == [("a", "ran"), ("b", "ran")]
    assert run_recipe(r, log=lambda *_: None) == [("a", "skipped"), ("b", "skipped")]
    meta = json.loads((tmp_path / "w" / "b" / "run.json").read_text())
    assert meta["argv"] == ["model", "info", "tiny", "--seq-len", "64"]
    stages[0]["args"] = ["tiny"]  # upstream change re-runs everything after it
    r = load_recipe(_write(tmp_path, stages))
    assert run_recipe(r, log=lambda *_: None) == [("a", "ran"), ("b", "ran")]


def test_placeholders_resolve_to_stage_dirs(tmp_path):
    stages = [
        {"name": "a", "run": "model info", "args": ["tiny"]},
        {"name": "b", "run": "model info", "args": ["tiny", "--seq-len", "{stages.a}"]},
    ]
    r = load_recipe(_write(tmp_path, stages))
    # {stages.a} became a/'s directory, which is not an int: argparse rejects it, the stage fails.
    with pytest.raises(RuntimeError, match=r"stage 'b' failed with exit code 2: .*--seq-len .*/w/a"):
        run_recipe(r, log=lambda *_: None)
    assert not (tmp_path / "w" / "b" / "run.json").exists()
    stages[1]["args"] = ["{stages.nope}"]
    with pytest.raises(ValueError, match="unresolved placeholder"):
        run_recipe(load_recipe(_write(tmp_path, stages)), log=lambda *_: None)


def test_bad_recipe_names_the_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("workdir: x\nstagez: []\n")
    with pytest.raises(ValueError, match="unknown recipe key.*stagez"):
        load_recipe(p)
    p.write_text("stages:\n  - run: model info\n")
    with pytest.raises(ValueError, match=r"stages\[0\] needs 'name'"):
        load_recipe(p)


def test_workdir_spelling_stale_outputs_and_one_line_failures(tmp_path, monkeypatch, capsys):
    from kollm.cli import main

    stages = [{"name": "a", "run": "model info", "args": ["tiny", "--json"]}]
    path = _write(tmp_path, stages)
    monkeypatch.chdir(tmp_path)
    r = load_recipe(path)
    r.workdir = "w"
    assert run_recipe(r, log=lambda *_: None) == [("a", "ran")]
    (tmp_path / "w" / "a" / "leftover.txt").write_text("from the run before")
    r.workdir = str(tmp_path / "w")  # the same directory, spelled absolutely
    assert run_recipe(r, log=lambda *_: None) == [("a", "skipped")]
    assert run_recipe(r, force=True, log=lambda *_: None) == [("a", "ran")]
    assert not (tmp_path / "w" / "a" / "leftover.txt").exists()  # a stale finished output starts afresh
    stages[0]["args"] = ["no-such-preset"]
    assert main(["run", str(_write(tmp_path, stages))]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("kollm run: recipe stage 'a' failed with exit code 1") and "Traceback" not in "".join(err)


def test_an_edited_config_file_re_runs_its_stage_and_what_follows(tmp_path):
    from pathlib import Path

    cfg = tmp_path / "pretrain.yaml"
    cfg.write_text((Path(__file__).resolve().parents[1] / "recipes" / "tiny-pretrain.yaml").read_text())
    stages = [{"name": "plan", "run": "pretrain", "args": [str(cfg), "--dry-run"]},
              {"name": "after", "run": "model info", "args": ["tiny"]}]
    r = load_recipe(_write(tmp_path, stages))
    assert run_recipe(r, log=lambda *_: None) == [("plan", "ran"), ("after", "ran")]
    assert run_recipe(r, log=lambda *_: None) == [("plan", "skipped"), ("after", "skipped")]
    meta = json.loads((tmp_path / "w" / "plan" / "run.json").read_text())
    assert list(meta["inputs"]) == [str(cfg.resolve())]  # lineage names the file and its hash
    cfg.write_text(cfg.read_text().replace("lr: 3.0e-3", "lr: 1.0e-3"))  # same arguments, new contents
    assert run_recipe(r, log=lambda *_: None) == [("plan", "ran"), ("after", "ran")]
