"""A training stage in one small place (torchtitan's TrainSpec, for stages instead of models).

Every stage (pretrain, sft, dpo, distill, grpo) is the one trainer (kollm.train.trainer) with four
parts swapped in, and its module ends with a `SPEC` naming them:

- `sections`: its own YAML sections beside the trainer's (model, data, batch, optimizer, schedule,
  phases, parallel, checkpoint, logging, validation), each a typed dataclass built as strictly as
  the trainer's (an unknown key names its path);
- `config`: `(raw, own, world) -> the stage's config`: builds the trainer's TrainConfig from what is
  left of the YAML (deriving what the stage sets itself: DPO's phase from its epochs, GRPO's batch
  from its group size) and bundles it with the built sections;
- `data`: the data source (kollm.train.trainer.DataSource) and validation source;
- `objective`: how a batch becomes a loss (kollm.train.objectives.base.Objective);
- `model`: the model setup (kollm.train.model_setup.build_run_model for every stage so far).

`SPEC.load(path, overrides)` is the one config loader (kollm.train.config.load_stage_config): the
same YAML + `--set` handling, strictness and error messages for every stage. kollm.train.stages
lists the stages; docs/stages.md follows a key from the YAML to the optimizer and writes a new stage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kollm.train.config import build_stage_config, load_stage_config
from kollm.train.model_setup import build_run_model


@dataclass(frozen=True)
class StageSpec:
    name: str  # the command: `kollm <name>`
    config: Callable[[dict, dict, int], Any]  # (YAML without the own sections, built own sections, world) -> config
    data: Callable[..., Any]  # the stage's data source builder (its arguments are the stage's)
    objective: Callable[..., Any]  # the stage's objective builder
    model: Callable[..., Any] = build_run_model  # (TrainConfig, device) -> the model to train
    sections: Mapping[str, type] = field(default_factory=dict)  # key -> typed dataclass, e.g. {"dpo": DPOSection}

    def from_dict(self, raw: dict, world: int = 1):
        """The stage's config from a YAML dict (errors name the key's path, not a file)."""
        return build_stage_config(raw, self.sections, self.config, world)

    def load(self, path: str | Path, overrides: list[str] = (), world: int = 1):
        """The stage's config from a YAML file and `--set KEY.PATH=VALUE` overrides."""
        return load_stage_config(path, list(overrides), self.sections, self.config, self.name, world)


__all__ = ["StageSpec"]
