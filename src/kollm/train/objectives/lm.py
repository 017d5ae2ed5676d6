"""The pretraining objective: next-token (shift 1) and MTP (shift 2) targets of a packed batch and
L = L_ntp + α·L_mtp (Trillion §3.4), `LMObjective`, through the chunked head
(kollm.train.objectives.chunked). MTP targets (token t+2) are dropped where t+2 lies in a different document and the
mask policy isolates documents: the model could not have seen anything of that document, so the
target is noise.
"""

from __future__ import annotations

import torch
from torch import nn

from kollm.data import IGNORE
from kollm.model import masks
from kollm.model.masks import ISOLATES_DOCUMENTS
from kollm.train.config import PhaseSection
from kollm.train.objectives.base import ObjectiveOutput
from kollm.train.objectives.chunked import linear_cross_entropy


def shifted_targets(labels: torch.Tensor, shift: int, doc_ids: torch.Tensor | None, isolate: bool) -> torch.Tensor:
    """Targets for position t = labels[t+shift], IGNORE where it crosses an isolated document."""
    tgt = torch.full_like(labels, IGNORE)
    tgt[:, :-shift] = labels[:, shift:]
    if isolate and doc_ids is not None:
        crosses = torch.zeros_like(labels, dtype=torch.bool)
        crosses[:, :-shift] = doc_ids[:, shift:] != doc_ids[:, :-shift]
        tgt[crosses] = IGNORE
    return tgt


class LMObjective:
    """Pretraining: next-token loss + α·MTP loss (kollm.train.objectives.lm) under a mask policy.

    Each term is a token mean over the whole step (all micro-batches, all ranks), so the result
    does not depend on how the step is split; NTP and MTP have different target counts (MTP
    targets never cross an isolated document), hence one total per term. With `langs` (the data
    source's language names) the next-token loss is also reported per language of the target
    token (`loss_en`, `loss_ko`, ...), from the same per-token cross entropy: no extra pass.
    """

    def __init__(self, mask_policy: str = "causal", restart_positions: bool = False, mtp_alpha: float = 0.0,
                 langs: list[str] | tuple[str, ...] = ()):
        self.mask_policy, self.restart_positions, self.mtp_alpha = mask_policy, restart_positions, mtp_alpha
        self.langs = list(langs)

    def targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels, docs = batch["labels"], batch.get("doc_ids")
        valid = labels[:, 1:] != IGNORE
        mtp = (shifted_targets(labels, 2, docs, ISOLATES_DOCUMENTS[self.mask_policy]) != IGNORE).sum()
        counts = [valid.sum(), mtp]
        if self.langs and "lang_ids" in batch:
            target_lang = batch["lang_ids"][:, 1:]
            counts += [(valid & (target_lang == i)).sum() for i in range(len(self.langs))]
            counts.append(valid.any(1).sum())  # sequences (with a target: not padding): the cross-lingual share's base
        return torch.stack(counts).float()

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor], totals: torch.Tensor) -> ObjectiveOutput:
        labels, docs = batch["labels"], batch.get("doc_ids")
        ntp_tgt = shifted_targets(labels, 1, docs, isolate=False)
        # global count: every rank takes the same branch
        train_mtp = bool(self.mtp_alpha) and bool(totals[1] > 0)

        def head(h: torch.Tensor, weight: torch.Tensor, shift: int):
            if shift == 1:
                return linear_cross_entropy(h, weight, ntp_tgt)
            if train_mtp:
                return linear_cross_entropy(h, weight, shifted_targets(labels, 2, docs,
                                                                       ISOLATES_DOCUMENTS[self.mask_policy]))[0]
            # α = 0 (or no MTP target here): keep the MTP block in the graph with a zero gradient,
            # or DDP would wait forever for gradients of parameters that got none.
            return 0.0 * h.sum()

        out = model(batch["input_ids"], doc_ids=docs, lang_ids=batch.get("lang_ids"),
                    mask_policy=self.mask_policy, restart_positions=self.restart_positions, head=head)
        ce_sum, ce, lse = out.head
        # sums over the global totals: the step's token means, however it is split into micro-batches
        total = totals[0].clamp(min=1)
        ntp = ce_sum / total
        # z-loss (PaLM's log² Z) reported, not trained: how far the head's logits drift from normalised
        loss, metrics = ntp, {"ntp_loss": ntp.detach(), "z_loss": lse.pow(2).sum() / total}
        if out.mtp_head is not None:
            if train_mtp:
                mtp = out.mtp_head / totals[1].clamp(min=1)
                loss = loss + self.mtp_alpha * mtp
                metrics["mtp_loss"] = mtp.detach()
            else:
                loss = loss + out.mtp_head
        if self.langs and "lang_ids" in batch and len(totals) > 2:
            metrics |= self._language_metrics(ce, labels, batch["lang_ids"], totals)
        if docs is not None:
            metrics |= self._mask_sparsity(docs, batch.get("lang_ids"), labels, totals)
        return ObjectiveOutput(loss, metrics)

    @torch.no_grad()
    def _mask_sparsity(self, docs: torch.Tensor, lang_ids: torch.Tensor | None, labels: torch.Tensor,
                       totals: torch.Tensor) -> dict[str, torch.Tensor]:
        """`attn_sparsity`: the fraction of the T×T attention matrix the mask policy blocks (causal
        alone ≈ 0.5; documents and XLDA blocks more); `attn_block_sparsity`: the 128-tiles
        FlexAttention skips. Counted from the ids (kollm.model.masks.sparsity, no T×T tensor); a
        mean over the step's sequences weighted by their targets (equal weights when packed)."""
        elems, tiles = masks.sparsity(self.mask_policy, docs, lang_ids)
        w = (labels[:, 1:] != IGNORE).sum(1).float() / totals[0].clamp(min=1)
        return {"attn_sparsity": (elems * w).sum(), "attn_block_sparsity": (tiles * w).sum()}

    @torch.no_grad()
    def _language_metrics(self, ce: torch.Tensor, labels: torch.Tensor, lang_ids: torch.Tensor,
                          totals: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per target language: its next-token loss (`loss_<lang>`) and its share of the step's
        targets (`mix_<lang>`: the mixture actually drawn); `xlingual_seqs`: the share of sequences
        that hold more than one language (XLDA as packed). Shares of global totals, like the loss."""
        valid = labels[:, 1:] != IGNORE
        target_lang = lang_ids[:, 1:]
        out = {}
        for i, lang in enumerate(self.langs):
            here = valid & (target_lang == i)
            if totals[2 + i] > 0:  # totals are global: every rank emits the same keys
                out[f"loss_{lang}"] = ce[:, :-1][here].sum() / totals[2 + i]
            out[f"mix_{lang}"] = here.sum() / totals[0].clamp(min=1)
        seen = lang_ids >= 0
        lo = torch.where(seen, lang_ids, len(self.langs)).min(1).values
        hi = torch.where(seen, lang_ids, -1).max(1).values
        out["xlingual_seqs"] = (seen.any(1) & (lo != hi)).sum() / totals[-1].clamp(min=1)
        return out

    def on_phase(self, phase: PhaseSection) -> None:
        self.mtp_alpha = phase.mtp_alpha


__all__ = ["IGNORE", "LMObjective", "shifted_targets"]
