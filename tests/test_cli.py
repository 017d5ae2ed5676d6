"""The `kollm` dispatcher: Ctrl-C while a stage is still loading (before the training loop, whose
own handler checkpoints) exits 130 with one line, as a Ctrl-C during training does, and no
traceback; and every `kollm STAGE --flag` that a stage's --help tells users to run names a flag
that stage accepts (`kollm sft --help` once pointed at `kollm generate --chat`)."""

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from kollm.cli import STAGES, main

# A reward module that says it is being imported, then blocks: `kollm dpo --online` imports its
# reward (dotted path) while loading, so the SIGINT below lands at that known point, not in a race.
BLOCKING_REWARD = '''
import os, pathlib, time
pathlib.Path(os.environ["KOLLM_TEST_READY"]).write_text("importing")
time.sleep(300)


def reward(prompt, response, row):
    return 0.0
'''


@pytest.mark.slow
def test_ctrl_c_while_loading_exits_130_quietly(tmp_path):
    (tmp_path / "blocking_reward.py").write_text(BLOCKING_REWARD)
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"id": "p0", "prompt": "1 + 1?"}) + "\n")
    cfg = {"output_dir": str(tmp_path / "run"), "model": {"init_from": str(tmp_path / "model")},
           "dpo": {"online": {"prompts": str(tmp_path / "prompts.jsonl"), "reward": "blocking_reward:reward"}}}
    (tmp_path / "online.yaml").write_text(yaml.safe_dump(cfg))
    ready = tmp_path / "ready"
    env = {**os.environ, "KOLLM_TEST_READY": str(ready),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])}
    # Ctrl-C's handler set in the child: a suite started in the background by a script inherits
    # SIGINT ignored, and so would the child (issue 24's loaded runs 2 and 3 failed so)
    start = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "sys.argv = sys.argv[1:]; runpy.run_module('kollm.cli', run_name='__main__')")
    p = subprocess.Popen([sys.executable, "-c", start, "kollm", "dpo", "--online", str(tmp_path / "online.yaml")],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 900  # a hang guard: importing torch took minutes under a loaded run
        while not ready.exists():
            assert p.poll() is None, f"exited ({p.returncode}) before loading the reward: {p.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "the reward module was never imported"
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=600)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == "kollm dpo: stopped by SIGINT"


def test_ctrl_c_in_any_stage_is_one_line(monkeypatch, capsys):
    import importlib

    from kollm import cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module(cli.STAGES["sft"][0]), "main", interrupted)
    assert cli.main(["sft", "cfg.yaml"]) == 130
    assert capsys.readouterr().err == "\nkollm sft: stopped by SIGINT\n"


# `kollm` then stage (and sub-command) words, then the flag the text names
_MENTION = re.compile(r"kollm((?: [a-z][a-z-]*)+?) (--[a-z][a-z0-9-]*)")


def _help(words: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            main([*words, "--help"])
        except SystemExit:
            pass
    return out.getvalue()


def test_flags_named_in_stage_help_exist():
    mentions: set[tuple[tuple[str, ...], str]] = set()
    for stage, (module, _) in STAGES.items():
        if module:
            text = " ".join(_help([stage]).split())  # argparse wraps lines: join them back
            mentions |= {(tuple(m.group(1).split()), m.group(2)) for m in _MENTION.finditer(text)}
    assert len(mentions) >= 5, mentions  # the scan finds the mentions at all
    bad = []
    for words, flag in sorted(mentions):
        helptext = _help(list(words))
        while not helptext.strip() and len(words) > 1:  # "kollm eval on a model --x": prose, not a sub-command
            words = words[:-1]
            helptext = _help(list(words))
        assert helptext.strip(), f"`kollm {' '.join(words)} --help` printed nothing"
        if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helptext):
            bad.append(f"kollm {' '.join(words)} {flag}")
    assert not bad, f"help texts name flags that do not exist: {bad}"
