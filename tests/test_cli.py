"""The stage dispatcher's help: every `kollm STAGE --flag` that a stage's --help tells users to run
names a flag that stage accepts (`kollm sft --help` once pointed at `kollm generate --chat`)."""

import contextlib
import io
import re

from kollm.cli import STAGES, main

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
