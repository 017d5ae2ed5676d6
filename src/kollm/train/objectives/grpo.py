"""GRPO objective (Shao et al. 2024, DeepSeekMath §4.1) with the loss aggregations people compare.

For completion token t of sequence i, with r = π_θ/π_old (token level):

    ℓ_it = −min(r·Â_i, clip(r, 1−ε_low, 1+ε_high)·Â_i) + β·KL_k3(π_θ ‖ π_ref),
    KL_k3 = exp(ref − logp) − (ref − logp) − 1        (Schulman's k3 estimator, always ≥ 0)
    Â_i = (R_i − mean(R_group)) / (std(R_group) + ε)   (group_advantages; std with Bessel, ε 1e-4)

Aggregation over the step's completion tokens (loss_type, TRL GRPOTrainer's names):
- `grpo`:    mean over sequences of each sequence's token mean (the paper's 1/G Σ 1/|o_i| Σ_t).
- `dapo`:    token-level: sum over all tokens / number of tokens in the step (DAPO, Yu et al. 2025).
- `bnpo`:    the same token mean; TRL normalises per micro-batch, kollm's trainer always by the
             whole step, so here it is `dapo` (identical to TRL with one micro-batch per step).
- `dr_grpo`: sum over all tokens / (sequences · max_completion_length) — a constant denominator
             (Dr. GRPO, Liu et al. 2025), no length bias.
The trainer hands `totals` = [sequences, completion tokens] of the whole step (all micro-batches,
all ranks) and each micro-batch returns its share, so any split gives the same gradient.
`_compute_loss` of TRL 1.16 is the reference (tests/train/test_grpo_objective.py checks parity).
"""

from __future__ import annotations

import torch
from torch import nn

from kollm.train.objectives.base import ObjectiveOutput
from kollm.train.objectives.chunked import token_logprobs

LOSS_TYPES = ("grpo", "dapo", "bnpo", "dr_grpo")


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4, scale: bool = True) -> torch.Tensor:
    """(N,) rewards, consecutive groups of `group_size` samples of one prompt → (N,) advantages."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)
    centred = r - r.mean(1, keepdim=True)
    if not scale or group_size == 1:
        return centred.view(-1)
    return (centred / (r.std(1, keepdim=True) + eps)).view(-1)


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(x_t | x_<t) aligned with `input_ids` (column 0, which nothing predicts, is 0);
    logits are divided by the sampling temperature first, as the samples were drawn."""
    logits = logits[:, :-1].float() / temperature
    picked = logits.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    logp = picked - torch.logsumexp(logits, dim=-1)
    return torch.cat([torch.zeros_like(logp[:, :1]), logp], dim=1)


def token_logps_head(input_ids: torch.Tensor, temperature: float = 1.0):
    """A model `head` (CausalLM.forward) giving `token_logps` from the hidden states, chunked
    (kollm.train.objectives.chunked): no (B, T, V) logits; an MTP head gets a zero term (DDP)."""

    def head(h: torch.Tensor, weight: torch.Tensor, shift: int) -> torch.Tensor:
        if shift != 1:
            return 0.0 * h.sum()
        B, T = input_ids.shape
        lp = token_logprobs(h[:, :-1].reshape(B * (T - 1), -1), weight, input_ids[:, 1:].reshape(-1), temperature)
        return torch.cat([lp.new_zeros(B, 1), lp.view(B, T - 1)], dim=1)

    return head


def per_token_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, eps_low: float,
                   eps_high: float, beta: float = 0.0, ref_logps: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T) loss per token, the k3 KL per token (zeros without a reference) and the clipped-token mask."""
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    loss = -torch.min(ratio * adv, clipped * adv)
    if ref_logps is not None:
        d = ref_logps - logps
        kl = torch.exp(d) - d - 1
    else:
        kl = torch.zeros_like(logps)
    if beta:
        loss = loss + beta * kl
    region = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    return loss, kl, region


def aggregate(loss: torch.Tensor, mask: torch.Tensor, loss_type: str, n_seqs: float, n_tokens: float,
              max_completion_length: int) -> torch.Tensor:
    """This batch's share of the step loss, given the step's sequence and token totals."""
    mask = mask.to(loss.dtype)
    if loss_type == "grpo":
        return ((loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum() / max(n_seqs, 1)
    if loss_type in ("dapo", "bnpo"):
        return (loss * mask).sum() / max(n_tokens, 1)
    if loss_type == "dr_grpo":
        return (loss * mask).sum() / (max(n_seqs, 1) * max_completion_length)
    raise ValueError(f"grpo.loss_type: one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")


class GRPOObjective:
    """The trainer's objective over rollout batches (kollm.train.grpo_data.RolloutSource):
    `input_ids` (B, T) prompt + completion, right-padded; `completion_mask` (B, T), 1 on completion
    tokens; `advantages`, `rewards`, `reward_std` (B,); `old_logps` and `ref_logps` (B, T) when
    μ > 1 and β > 0 (π_old = the policy that sampled; with μ = 1 it is the current one, detached)."""

    def __init__(self, loss_type: str = "grpo", epsilon: float = 0.2, epsilon_high: float | None = None,
                 beta: float = 0.0, max_completion_length: int = 256, temperature: float = 1.0):
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"grpo.loss_type: one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
        self.loss_type, self.beta, self.temperature = loss_type, beta, temperature
        self.eps_low, self.eps_high = epsilon, epsilon if epsilon_high is None else epsilon_high
        self.max_completion_length = max_completion_length

    def targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([torch.tensor(batch["input_ids"].shape[0]), batch["completion_mask"].sum()]).float()

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor], totals: torch.Tensor) -> ObjectiveOutput:
        n_seqs, n_tokens = totals.tolist()
        out = model(batch["input_ids"], head=token_logps_head(batch["input_ids"], self.temperature))
        mask = batch["completion_mask"].float()
        logps = out.head
        old = batch.get("old_logps")
        old = logps.detach() if old is None else old
        loss_tok, kl, region = per_token_loss(logps, old, batch["advantages"], self.eps_low, self.eps_high,
                                              self.beta, batch.get("ref_logps"))
        loss = aggregate(loss_tok, mask, self.loss_type, n_seqs, n_tokens, self.max_completion_length)
        if out.mtp_head is not None:  # keep an MTP block in the graph (DDP), contributing nothing
            loss = loss + out.mtp_head
        seq_share, tok_share = 1.0 / max(n_seqs, 1), 1.0 / max(n_tokens, 1)
        metrics = {
            "reward_mean": batch["rewards"].float().sum() * seq_share,
            "reward_std": batch["reward_std"].float().sum() * seq_share,
            "response_len": mask.sum() * seq_share,
            "kl": (kl.detach() * mask).sum() * tok_share,
            "clip_frac": (region.float() * mask).sum() * tok_share,
        } | {k: v.float().sum() * seq_share for k, v in batch.items()  # each reward's own mean
             if k.startswith("reward_") and k not in ("reward_std", "reward_mean")}
        if "weight_sync_s" in batch:  # the rollout server's weight sync before this batch (0 on reuse)
            metrics["weight_sync_s"] = batch["weight_sync_s"].float().sum() * seq_share
        return ObjectiveOutput(loss, metrics)

    def on_phase(self, phase) -> None:
        pass


__all__ = ["GRPOObjective", "LOSS_TYPES", "group_advantages", "token_logps", "token_logps_head", "per_token_loss", "aggregate"]
