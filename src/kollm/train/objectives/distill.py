"""Distillation objective: a divergence between teacher p and student q over the response tokens.

DNA 1.0 §4.5 distils with DistiLLM's skew KL (Ko et al. 2024, github jongwooko/distillm):

    fkl   KL(p ‖ q)                       rkl   KL(q ‖ p)
    skl   KL(p ‖ α·p + (1−α)·q)           srkl  KL(q ‖ (1−α)·p + α·q)        (α = 0.1)

Everything is computed in log space from logits: log p and log q by log-softmax in float32, the
log of a mixture by `logaddexp(log w + log p, log(1−w) + log q)`, so no probability is ever
rounded to 0 and then logged. Unlike DistiLLM's `skewed_forward_kl` / `forward_kl`, which return
the cross-entropy −Σ p·log m (the KL plus the teacher's entropy: same gradient, not zero at
q = p), these are true divergences: zero for identical distributions.

The teacher is either a model run here without gradients (its logits) or top-k log-probabilities
stored by `kollm distill precompute`. With stored top-k, the k tokens keep their own
probabilities and the rest of the vocabulary is lumped into one "tail" token on both sides
(teacher: the stored tail mass; student: its exact mass outside the k ids, a logsumexp over the
remaining logits). The divergence of these (k+1)-way distributions is exact for them and a lower
bound of the full-vocabulary divergence (data processing); the gap is the teacher's unknown tail
shape, which no stored top-k can recover.

Loss: (1 − ce_weight)·divergence + ce_weight·cross-entropy (DistiLLM's kd_ratio, as its
`(1 − kd_ratio)·lm_loss + kd_ratio·distil_loss`, with the weight on the other side), each a token
mean over the step's response targets (the trainer's shares: this micro-batch's sum / the global
count), as LMObjective.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kollm.train.objectives.base import ObjectiveOutput
from kollm.train.objectives.chunked import chunked_tokens
from kollm.train.objectives.lm import IGNORE

KINDS = ("fkl", "rkl", "skl", "srkl")


def _up(x: torch.Tensor) -> torch.Tensor:
    """float32 at least (bf16 logits lose the small probabilities); float64 stays (gradcheck)."""
    return x if x.dtype == torch.float64 else x.float()


def log_mix(log_p: torch.Tensor, log_q: torch.Tensor, weight_p: float) -> torch.Tensor:
    """log(w·p + (1−w)·q) from log p and log q, stably."""
    if weight_p <= 0.0:
        return log_q
    if weight_p >= 1.0:
        return log_p
    return torch.logaddexp(log_p + math.log(weight_p), log_q + math.log1p(-weight_p))


def kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a ‖ b) = Σ a·(log a − log b) over the last dim; a term with a = 0 is 0 (and so is its
    gradient: the -inf entries are replaced before the product, not after)."""
    live = log_a > float("-inf")
    la = torch.where(live, log_a, 0.0)
    lb = torch.where(live, log_b, 0.0)
    return torch.where(live, la.exp() * (la - lb), 0.0).sum(-1)


def divergence_from_logprobs(log_q: torch.Tensor, log_p: torch.Tensor, kind: str, alpha: float = 0.1) -> torch.Tensor:
    """Per-position divergence (last dim reduced) from student log q and teacher log p."""
    if kind == "fkl":
        return kl(log_p, log_q)
    if kind == "rkl":
        return kl(log_q, log_p)
    if kind == "skl":
        return kl(log_p, log_mix(log_p, log_q, alpha))
    if kind == "srkl":
        return kl(log_q, log_mix(log_p, log_q, 1.0 - alpha))
    raise ValueError(f"distill.loss: {' | '.join(KINDS)}, got {kind!r}")


def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str, alpha: float = 0.1) -> torch.Tensor:
    """Per-position divergence between full-vocabulary logits (…, V) → (…)."""
    log_q = F.log_softmax(_up(student_logits), dim=-1)
    log_p = F.log_softmax(_up(teacher_logits), dim=-1)
    return divergence_from_logprobs(log_q, log_p, kind, alpha)


def topk_divergence(student_logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_logp: torch.Tensor,
                    teacher_log_tail: torch.Tensor, kind: str, alpha: float = 0.1) -> torch.Tensor:
    """Per-position divergence against stored teacher top-k: (…, V) student logits, (…, k) ids
    and teacher log-probs, (…) teacher log tail mass → (…). The tail is one lumped token."""
    s = _up(student_logits)
    log_z = torch.logsumexp(s, dim=-1, keepdim=True)
    log_q_k = s.gather(-1, teacher_ids.long()) - log_z
    # Student tail: logsumexp over the logits outside the k ids (exact, no 1 − Σq cancellation).
    log_q_tail = torch.logsumexp(s.scatter(-1, teacher_ids.long(), float("-inf")), dim=-1, keepdim=True) - log_z
    log_q = torch.cat([log_q_k, log_q_tail], dim=-1)
    log_p = torch.cat([teacher_logp.to(s.dtype), teacher_log_tail.to(s.dtype).unsqueeze(-1)], dim=-1)
    return divergence_from_logprobs(log_q, log_p, kind, alpha)


def teacher_topk(teacher_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(…, V) logits → top-k ids (int32), their log-probs, and the log of the remaining mass."""
    log_p = F.log_softmax(_up(teacher_logits), dim=-1)
    logp_k, ids = log_p.topk(k, dim=-1)
    tail = torch.logsumexp(log_p.scatter(-1, ids, float("-inf")), dim=-1)
    return ids.to(torch.int32), logp_k, tail


def target_mask(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) labels aligned with the inputs → (B, T−1) mask of the logits positions that have a target."""
    return labels[:, 1:] != IGNORE


class DistillObjective:
    """Trainer objective: student forward, teacher logits (a frozen model) or stored top-k from
    the batch (`teacher_ids`, `teacher_logp`, `teacher_tail`, aligned with the logits), the
    divergence and the optional cross-entropy on the response targets.

    Metrics (shares of the global token mean, summed by the trainer): `kl` (the configured
    divergence), `ce` (student cross-entropy on the targets); `off_policy_prob` and
    `replay_size` when the data source puts them in the batch (as per-batch scalars)."""

    def __init__(self, teacher: nn.Module | None, kind: str = "skl", alpha: float = 0.1, ce_weight: float = 0.0,
                 vocab_size: int | None = None):
        if kind not in KINDS:
            raise ValueError(f"distill.loss: {' | '.join(KINDS)}, got {kind!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distill.alpha must be in [0, 1], got {alpha}")
        if not 0.0 <= ce_weight <= 1.0:
            raise ValueError(f"distill.ce_weight must be in [0, 1], got {ce_weight}")
        self.teacher, self.kind, self.alpha, self.ce_weight = teacher, kind, alpha, ce_weight
        self.vocab_size = vocab_size  # the shared tokenizer's size: logits are cut to it when rows differ

    def targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return target_mask(batch["labels"]).sum().float().reshape(1)

    def _teacher_hidden(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's final hidden states and head weight: its logits are made chunk by chunk."""
        with torch.no_grad():
            return self.teacher(batch["input_ids"], head=lambda h, w, shift: (h, w)).head

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor], totals: torch.Tensor):
        mask = target_mask(batch["labels"])
        tgt = batch["labels"][:, 1:][mask]
        kind, alpha = self.kind, self.alpha
        stored = "teacher_ids" in batch
        if stored:
            extra = [batch[k][:, :-1][mask] for k in ("teacher_ids", "teacher_logp", "teacher_tail")]
            t_weight = None
        else:
            if self.teacher is None:
                raise ValueError("distillation needs teacher.model or stored teacher top-k (teacher.stored)")
            t_hidden, t_weight = self._teacher_hidden(batch)
            extra = [t_hidden[:, :-1][mask]]
        vocab = self.vocab_size

        def per_token(x: torch.Tensor, w: torch.Tensor, t: torch.Tensor, *teacher: torch.Tensor) -> torch.Tensor:
            """(divergence, cross entropy) of a chunk of response positions: only these go through
            the vocabulary-wide math, one chunk's logits (student and teacher) at a time."""
            s = F.linear(x, w)
            if stored:
                div = topk_divergence(s, *teacher, kind, alpha)
            else:
                tl = F.linear(teacher[0], t_weight)
                if tl.shape[-1] != s.shape[-1]:  # padded embedding rows: compare over the shared tokenizer's ids
                    v = vocab or min(tl.shape[-1], s.shape[-1])
                    s, tl = s[..., :v], tl[..., :v]
                div = divergence(s, tl, kind, alpha)
            return torch.stack([div.float(), F.cross_entropy(s.float(), t, reduction="none")], dim=-1)

        def head(h: torch.Tensor, w: torch.Tensor, shift: int):
            if shift != 1:
                return 0.0 * h.sum()  # an MTP block: in the graph (DDP), not trained
            # no response token here: keep every parameter in the graph (DDP) with a zero term
            keep = 0.0 * (h.sum() + w.sum()) if tgt.shape[0] == 0 else None
            return chunked_tokens(per_token, h[:, :-1][mask], w, tgt, *extra), keep

        out = model(batch["input_ids"], head=head)
        (terms, keep), total = out.head, totals[0].clamp(min=1)
        kl_share, ce_share = terms[:, 0].sum() / total, terms[:, 1].sum() / total
        loss = (1.0 - self.ce_weight) * kl_share + self.ce_weight * ce_share if self.ce_weight else kl_share
        if out.mtp_head is not None:
            loss = loss + out.mtp_head
        if keep is not None:
            loss = loss + keep
        metrics = {"kl": kl_share.detach(), "ce": ce_share.detach()}
        share = mask.sum() / total
        for key in ("off_policy_prob", "replay_size"):
            if key in batch:  # per-batch scalars → shares, so the trainer's sum is their weighted mean
                metrics[key] = batch[key].float().reshape(-1)[0] * share
        return ObjectiveOutput(loss, metrics)

    def on_phase(self, phase) -> None:
        pass


__all__ = ["KINDS", "DistillObjective", "divergence", "divergence_from_logprobs", "kl", "log_mix",
           "target_mask", "teacher_topk", "topk_divergence"]
