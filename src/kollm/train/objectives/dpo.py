"""Direct Preference Optimization (Rafailov et al. 2023) and two variants, as TRL's `DPOTrainer`
computes them (trl 1.16 `trainer/dpo_trainer.py`, `_compute_loss`):

    log-ratio  h_w = log πθ(y_w|x) − log π_ref(y_w|x),   h_l likewise for the rejected response
    sigmoid       −log σ(β (h_w − h_l))                                   (DPO; β = 0.1 by default)
    ipo           (h_w/|y_w| − h_l/|y_l| − 1/(2β))²                      (Azar et al. 2023 eq. 17, per-token
                                                                            log-ratios as TRL and the IPO authors use)
    sigmoid_norm  −log σ(β (h_w/|y_w| − h_l/|y_l|))                      (length-normalised DPO)

log π(y|x) is the sum of the completion tokens' log-probabilities. Rewards are β·h (TRL's
`rewards/chosen`, `rewards/rejected`); `reward_accuracy` is the share of pairs with β·h_w > β·h_l.
When the policy equals the reference every h is 0 and the sigmoid loss is exactly ln 2.

RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization"; TRL's `rpo_alpha`, in trl 1.16
`loss_type=["sigmoid", "sft"], loss_weights=[1, α]`) adds α × the NLL of the chosen completions:
−(sum of the chosen tokens' log-probabilities) / (number of chosen tokens), a mean over every chosen
token of the batch (not per pair), the rejected half left out. DPO alone can raise the margin by
pushing both completions down; the NLL term keeps the chosen one likely.

A batch holds the B pairs as 2B rows, chosen first then rejected (one forward, as TRL's
concatenated forward): `input_ids`, `labels` (−100 outside the completion), and `ref_logps`
(2B,) precomputed once (kollm.train.dpo) or, for comparison, computed here by a reference model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kollm.train.objectives.base import ObjectiveOutput
from kollm.train.objectives.chunked import token_logprobs
from kollm.train.objectives.lm import IGNORE

LOSSES = ("sigmoid", "ipo", "sigmoid_norm")


def completion_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's labelled tokens and their count. `labels` are aligned
    with the inputs (position t's logits predict labels[t+1]); only labelled positions go through
    the float32 log-softmax, so a long prompt costs no (T, V) float copy."""
    tgt = labels[:, 1:]
    mask = tgt != IGNORE
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(tgt)[mask]
    picked = logits[:, :-1][mask].float()  # (M, V)
    lp = picked.log_softmax(-1).gather(-1, tgt[mask][:, None]).squeeze(-1)
    sums = torch.zeros(labels.shape[0], device=logits.device, dtype=torch.float32).index_add(0, rows, lp)
    return sums, mask.sum(1).float()


def completion_head(labels: torch.Tensor):
    """A model `head` (CausalLM.forward) that gives `completion_logps` from the hidden states,
    chunked (kollm.train.objectives.chunked): no (tokens, V) logits. An MTP head gets a zero
    term, which keeps its block in the graph (DDP) without training it."""
    tgt = labels[:, 1:]
    mask = tgt != IGNORE
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(tgt)[mask]

    def head(h: torch.Tensor, weight: torch.Tensor, shift: int):
        if shift != 1:
            return 0.0 * h.sum()
        lp = token_logprobs(h[:, :-1][mask], weight, tgt[mask])
        sums = torch.zeros(labels.shape[0], device=h.device, dtype=torch.float32).index_add(0, rows, lp)
        return sums, mask.sum(1).float()

    return head


def dpo_loss(policy: torch.Tensor, reference: torch.Tensor, counts: torch.Tensor, beta: float = 0.1,
             loss: str = "sigmoid") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the chosen / rejected rewards β·h. `policy`, `reference` and `counts`
    are (2B,) with the B chosen rows first."""
    h_w, h_l = (policy - reference).chunk(2)
    n_w, n_l = counts.clamp(min=1).chunk(2)
    if loss == "sigmoid":
        losses = -F.logsigmoid(beta * (h_w - h_l))
    elif loss == "ipo":
        losses = (h_w / n_w - h_l / n_l - 1 / (2 * beta)) ** 2
    elif loss == "sigmoid_norm":
        losses = -F.logsigmoid(beta * (h_w / n_w - h_l / n_l))
    else:
        raise ValueError(f"dpo.loss: one of {', '.join(LOSSES)}, got {loss!r}")
    return losses, beta * h_w.detach(), beta * h_l.detach()


@torch.no_grad()
def sequence_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log π(y|x) of every row of a batch, without gradients (the reference pass)."""
    return model(batch["input_ids"], head=completion_head(batch["labels"])).head[0]


class DPOObjective:
    """The trainer's objective for preference pairs. Every value is this micro-batch's share of a
    mean over all the step's pairs (all micro-batches, all ranks), so the trainer's sums are means."""

    def __init__(self, beta: float = 0.1, loss: str = "sigmoid", reference: nn.Module | None = None,
                 rpo_alpha: float | None = None):
        if loss not in LOSSES:
            raise ValueError(f"dpo.loss: one of {', '.join(LOSSES)}, got {loss!r}")
        if beta <= 0:
            raise ValueError(f"dpo.beta must be positive, got {beta}")
        if rpo_alpha is not None and not (math.isfinite(rpo_alpha) and rpo_alpha >= 0):
            raise ValueError(f"dpo.rpo_alpha must be null or a finite number >= 0, got {rpo_alpha!r}")
        self.beta, self.loss, self.reference, self.rpo_alpha = beta, loss, reference, rpo_alpha or 0.0

    def targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(pairs, chosen completion tokens): RPO's NLL is a mean over the step's chosen tokens."""
        pairs = batch["input_ids"].shape[0] // 2
        chosen = (batch["labels"][:pairs, 1:] != IGNORE).sum()
        return torch.tensor([pairs, float(chosen)], dtype=torch.float32)

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor], totals: torch.Tensor):
        out = model(batch["input_ids"], head=completion_head(batch["labels"]))
        logps, counts = out.head
        if "ref_logps" in batch:
            ref = batch["ref_logps"].to(logps)
        elif self.reference is not None:
            ref = sequence_logps(self.reference, batch).float()
        else:
            raise ValueError("DPO batch without ref_logps and no reference model")
        losses, r_w, r_l = dpo_loss(logps, ref, counts, self.beta, self.loss)
        n = totals[0].clamp(min=1)
        loss = losses.sum() / n
        if out.mtp_head is not None:  # an MTP checkpoint: the head gets no DPO gradient, keep DDP whole
            loss = loss + out.mtp_head
        metrics = {"reward_accuracy": (r_w > r_l).float().sum() / n, "chosen_reward": r_w.sum() / n,
                   "rejected_reward": r_l.sum() / n, "margin": (r_w - r_l).sum() / n}
        if self.rpo_alpha:
            nll = -logps[: losses.shape[0]].sum() / totals[1].clamp(min=1)
            loss = loss + self.rpo_alpha * nll
            metrics["chosen_nll"] = nll.detach()
        return ObjectiveOutput(loss, metrics)

    def on_phase(self, phase) -> None:
        pass


__all__ = ["DPOObjective", "dpo_loss", "completion_logps", "completion_head", "sequence_logps", "LOSSES"]
