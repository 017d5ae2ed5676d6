"""What an objective is to the one trainer (kollm.train.trainer): per micro-batch the target
counts of each loss term, then the loss as its share of the step's global token mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from kollm.train.config import PhaseSection


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # this micro-batch's share of the step's global loss; what backward sees
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # detached shares, summed for logging


class Objective(Protocol):
    def targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Target counts of each loss term in `batch` (1-D float); the trainer sums them over the
        step's micro-batches and ranks and hands the totals back to `__call__`."""
        ...

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor], totals: torch.Tensor) -> ObjectiveOutput: ...
    def on_phase(self, phase: PhaseSection) -> None: ...


__all__ = ["ObjectiveOutput", "Objective"]
