"""SFT objective: next-token cross entropy on the trained (assistant) tokens only.

The loss is the token mean over every trained target of the optimizer step — all micro-batches,
all ranks (the trainer hands back the global count) — so a step's gradient does not depend on how
it is split or packed; TRL's SFTTrainer and open-instruct's `sum` loss normalise the same way
(a per-sequence mean would weight short responses up). The head and loss run chunked
(kollm.train.objectives.chunked): only the trained tokens go through the vocabulary. Labels carry −100 off the responses
(kollm.data.sft); a target never crosses from one packed conversation into the next.
"""

from __future__ import annotations

import torch
from torch import nn

from kollm.train.objectives.base import ObjectiveOutput
from kollm.train.objectives.chunked import linear_cross_entropy
from kollm.train.objectives.lm import IGNORE, shifted_targets


class SFTObjective:
    def __init__(self, mask_policy: str = "document", restart_positions: bool = True):
        self.mask_policy, self.restart_positions = mask_policy, restart_positions

    @staticmethod
    def _targets(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return shifted_targets(batch["labels"], 1, batch.get("doc_ids"), isolate=True)

    def targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return (self._targets(batch) != IGNORE).sum().float().reshape(1)

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor], totals: torch.Tensor) -> ObjectiveOutput:
        tgt = self._targets(batch)
        # an MTP block is not trained here; DDP needs it in the graph
        head = lambda h, w, shift: linear_cross_entropy(h, w, tgt)[0] if shift == 1 else 0.0 * h.sum()  # noqa: E731
        out = model(batch["input_ids"], doc_ids=batch.get("doc_ids"), mask_policy=self.mask_policy,
                    restart_positions=self.restart_positions, head=head)
        loss = out.head / totals[0].clamp(min=1)
        if out.mtp_head is not None:
            loss = loss + out.mtp_head
        n = (tgt != IGNORE).sum().float()
        return ObjectiveOutput(loss, {"trained_tokens": n})

    def on_phase(self, phase) -> None:
        pass


__all__ = ["SFTObjective"]
