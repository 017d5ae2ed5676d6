"""The training stages in the order a model is built, each a kollm.train.spec.StageSpec named
`SPEC` at the end of its module: pretraining (Trillion 7B §3; continual pretraining, DNA 1.0),
SFT (Trillion §4, DNA §4.2), DPO (DNA §4.3), distillation (DNA §4.5) and GRPO (Trillion §4).

The modules load when a stage is asked for, so that one stage's imports never slow another
(`kollm STAGE` imports only its own: kollm.cli)."""

from __future__ import annotations

import importlib

from kollm.train.spec import StageSpec

STAGES: dict[str, str] = {
    "pretrain": "kollm.train.pretrain",
    "sft": "kollm.train.sft",
    "dpo": "kollm.train.dpo",
    "distill": "kollm.train.distill",
    "grpo": "kollm.train.grpo",
}


def stage(name: str) -> StageSpec:
    """The spec of a training stage by its command name."""
    if name not in STAGES:
        raise KeyError(f"{name!r}: not a training stage (one of {', '.join(STAGES)})")
    return importlib.import_module(STAGES[name]).SPEC


__all__ = ["STAGES", "stage"]
