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


def test_a_data_file_kept_in_the_workdir_re_runs_its_stage_when_its_contents_change(tmp_path, monkeypatch):
    # `--set data.train=W/data/chat.jsonl`: a user's file beside the stages in the workdir is an input,
    # not an earlier stage's output; a new content (same path, same arguments) re-runs the stage.
    import kollm.cli

    monkeypatch.setattr(kollm.cli, "main", lambda argv: 0)
    data = tmp_path / "w" / "data" / "chat.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')
    stages = [{"name": "sft", "run": "sft", "args": ["--set", f"data.train={data}", "--out", "{out}"]},
              {"name": "dpo", "run": "dpo", "args": ["--set", "model.init_from={stages.sft}/run.json"]}]
    r = load_recipe(_write(tmp_path, stages))
    assert run_recipe(r, log=lambda *_: None) == [("sft", "ran"), ("dpo", "ran")]
    assert run_recipe(r, log=lambda *_: None) == [("sft", "skipped"), ("dpo", "skipped")]
    assert list(json.loads((tmp_path / "w" / "sft" / "run.json").read_text())["inputs"]) == [str(data.resolve())]
    assert json.loads((tmp_path / "w" / "dpo" / "run.json").read_text())["inputs"] == {}  # an output: the chain's
    data.write_text(data.read_text().replace('"b"', '"c"'))
    assert run_recipe(r, log=lambda *_: None) == [("sft", "ran"), ("dpo", "ran")]


def test_an_interrupted_stage_resumes_only_on_the_same_inputs(tmp_path, monkeypatch):
    # A stage killed mid-run leaves its output (checkpoints) for --resume; if its data changed since,
    # resuming would continue training on the old data, so the runner starts it afresh.
    import kollm.cli

    data = tmp_path / "train.jsonl"
    data.write_text("old\n")
    seen = []

    def fake_main(argv):
        out = Path(argv[-1])
        seen.append(sorted(p.name for p in out.iterdir()) if out.exists() else None)
        out.mkdir(parents=True, exist_ok=True)
        (out / "checkpoint").write_text(data.read_text())
        return 1 if len(seen) <= 2 else 0  # the first two runs are interrupted

    from pathlib import Path

    monkeypatch.setattr(kollm.cli, "main", fake_main)
    stages = [{"name": "sft", "run": "sft", "args": ["--set", f"data.train={data}", "--out", "{out}"]}]
    r = load_recipe(_write(tmp_path, stages))
    for _ in range(2):
        with pytest.raises(RuntimeError, match="stage 'sft' failed"):
            run_recipe(r, log=lambda *_: None)
    assert seen == [None, ["checkpoint"]]  # same inputs: the interrupted output is there to resume
    data.write_text("new\n")
    assert run_recipe(r, log=lambda *_: None) == [("sft", "ran")]
    assert seen[-1] is None  # other inputs: started afresh
    assert not (tmp_path / "w" / ".sft.pending.json").exists()
