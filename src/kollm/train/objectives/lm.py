"""Language-modelling targets: next-token (shift 1) and MTP (shift 2) labels of a packed batch.

L = L_ntp + α·L_mtp (Trillion §3.4), computed by `LMObjective` (train/trainer.py) through the
chunked head. MTP targets (token t+2) are dropped where t+2 lies in a different document and the
mask policy isolates documents: the model could not have seen anything of that document, so the
target is noise.
"""

from __future__ import annotations

import torch

from kollm.data import IGNORE


def shifted_targets(labels: torch.Tensor, shift: int, doc_ids: torch.Tensor | None, isolate: bool) -> torch.Tensor:
    """Targets for position t = labels[t+shift], IGNORE where it crosses an isolated document."""
    tgt = torch.full_like(labels, IGNORE)
    tgt[:, :-shift] = labels[:, shift:]
    if isolate and doc_ids is not None:
        crosses = torch.zeros_like(labels, dtype=torch.bool)
        crosses[:, :-shift] = doc_ids[:, shift:] != doc_ids[:, :-shift]
        tgt[crosses] = IGNORE
    return tgt
