"""Language-modelling objective: next-token loss plus the optional MTP loss.

L = L_ntp + α·L_mtp (Trillion §3.4). MTP targets (token t+2) are dropped where t+2 lies in a
different document and the mask policy isolates documents: the model could not have seen
anything of that document, so the target is noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kollm.data import IGNORE
from kollm.model.masks import ISOLATES_DOCUMENTS
from kollm.model.transformer import ModelOutput


@dataclass
class LMLoss:
    loss: torch.Tensor
    ntp: torch.Tensor
    mtp: torch.Tensor | None
    n_tokens: int


def shifted_targets(labels: torch.Tensor, shift: int, doc_ids: torch.Tensor | None, isolate: bool) -> torch.Tensor:
    """Targets for position t = labels[t+shift], IGNORE where it crosses an isolated document."""
    tgt = torch.full_like(labels, IGNORE)
    tgt[:, :-shift] = labels[:, shift:]
    if isolate and doc_ids is not None:
        crosses = torch.zeros_like(labels, dtype=torch.bool)
        crosses[:, :-shift] = doc_ids[:, shift:] != doc_ids[:, :-shift]
        tgt[crosses] = IGNORE
    return tgt


def lm_loss(
    out: ModelOutput,
    labels: torch.Tensor,
    doc_ids: torch.Tensor | None = None,
    mask_policy: str = "causal",
    mtp_alpha: float = 0.0,
) -> LMLoss:
    """Token-mean cross entropy; `labels` are aligned with the inputs (HF convention), -100 ignored."""
    V = out.logits.shape[-1]
    ntp_tgt = shifted_targets(labels, 1, doc_ids, isolate=False)
    ntp = F.cross_entropy(out.logits.float().reshape(-1, V), ntp_tgt.reshape(-1), ignore_index=IGNORE)
    n_tokens = int((ntp_tgt != IGNORE).sum())
    if out.mtp_logits is None or mtp_alpha == 0.0:
        return LMLoss(ntp, ntp.detach(), None, n_tokens)
    mtp_tgt = shifted_targets(labels, 2, doc_ids, isolate=ISOLATES_DOCUMENTS[mask_policy])
    mtp = F.cross_entropy(out.mtp_logits.float().reshape(-1, V), mtp_tgt.reshape(-1), ignore_index=IGNORE)
    return LMLoss(ntp + mtp_alpha * mtp, ntp.detach(), mtp.detach(), n_tokens)
