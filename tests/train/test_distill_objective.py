"""Distillation losses (kollm.train.objectives.distill): zero at q = p, a hand computation, float64
gradcheck, parity with DistiLLM's loss formulas (re-implemented here from jongwooko/distillm
distillm/losses.py) and TRL's GKDTrainer.generalized_jsd_loss (skipped without TRL), the stored
top-k approximation, and the trainer share convention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kollm.train.objectives.distill import (
    KINDS,
    DistillObjective,
    divergence,
    teacher_topk,
    topk_divergence,
)
from kollm.train.objectives.lm import IGNORE

P = [0.5, 0.3, 0.2]
Q = [0.2, 0.5, 0.3]


def _kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b))


def _logits(probs):
    return torch.tensor(probs, dtype=torch.float64).log()


@pytest.mark.parametrize("kind", KINDS)
def test_zero_for_identical_distributions(kind):
    x = torch.randn(4, 7, 50) * 3
    assert divergence(x, x.clone(), kind).abs().max() < 1e-6
    # a shift of the logits is the same distribution
    assert divergence(x, x + 5.0, kind).abs().max() < 1e-5


def test_hand_computation():
    a = 0.1
    m_skl = [a * p + (1 - a) * q for p, q in zip(P, Q)]
    m_srkl = [(1 - a) * p + a * q for p, q in zip(P, Q)]
    want = {"fkl": _kl(P, Q), "rkl": _kl(Q, P), "skl": _kl(P, m_skl), "srkl": _kl(Q, m_srkl)}
    # by hand, to four places: fkl = .5 ln 2.5 + .3 ln .6 + .2 ln(2/3)
    assert want["fkl"] == pytest.approx(0.5 * math.log(2.5) + 0.3 * math.log(0.6) + 0.2 * math.log(2 / 3))
    assert want["fkl"] == pytest.approx(0.2238, abs=1e-4)
    for kind, value in want.items():
        got = divergence(_logits(Q), _logits(P), kind, alpha=a)
        assert float(got) == pytest.approx(value, rel=1e-10), kind
    # the skew bounds: 0 ≤ SKL_α ≤ KL, and α → 0 gives back the plain KLs
    assert 0 < want["skl"] < want["fkl"] and 0 < want["srkl"] < want["rkl"]
    assert float(divergence(_logits(Q), _logits(P), "skl", alpha=0.0)) == pytest.approx(want["fkl"])
    assert float(divergence(_logits(Q), _logits(P), "srkl", alpha=0.0)) == pytest.approx(want["rkl"])
    assert float(divergence(_logits(Q), _logits(P), "skl", alpha=1.0)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_float64(kind):
    torch.manual_seed(0)
    s = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: divergence(a, b, kind, 0.1), (s, t))
    ids = t.detach().topk(2, dim=-1).indices
    _, logp, tail = teacher_topk(t.detach(), 2)
    assert torch.autograd.gradcheck(lambda a: topk_divergence(a, ids, logp, tail, kind, 0.1), (s,))


def test_stable_for_far_apart_logits():
    # probabilities of 1e-40 in float32: log space keeps the divergence finite, and right
    s = torch.tensor([[0.0, 90.0, 0.0]])
    t = torch.tensor([[90.0, 0.0, 0.0]])
    for kind in KINDS:
        v = divergence(s, t, kind)
        assert torch.isfinite(v).all(), kind
    assert float(divergence(s, t, "fkl")) == pytest.approx(90.0, rel=1e-4)
    assert float(divergence(s, t, "skl", 0.1)) == pytest.approx(-math.log(0.1), rel=1e-4)  # KL(p ‖ 0.1p + …)


# -- DistiLLM (jongwooko/distillm, distillm/losses.py), re-implemented from its formulas -------
# Its losses take (B, T, V) logits, a label tensor and mask by label != -100, then divide the
# masked sum by the number of labelled positions of *this* micro-batch. Its forward_kl and
# skewed_forward_kl return the cross-entropy −Σ p·log(·), i.e. the KL plus the teacher's entropy.
def _distillm(logits, teacher_logits, labels, kind, lam=0.1):
    tp = F.softmax(teacher_logits, -1, dtype=torch.float32)
    sp = F.softmax(logits, -1, dtype=torch.float32)
    slp = F.log_softmax(logits, -1, dtype=torch.float32)
    tlp = F.log_softmax(teacher_logits, -1, dtype=torch.float32)
    if kind == "fkl":
        x = (tp * slp).sum(-1)
    elif kind == "rkl":
        x = (sp * tlp).sum(-1) - (sp * slp).sum(-1)
    elif kind == "skl":
        x = (tp * torch.log(lam * tp + (1 - lam) * sp)).sum(-1)
    else:
        x = (sp * torch.log((1 - lam) * tp + lam * sp)).sum(-1) - (sp * slp).sum(-1)
    mask = (labels != -100).int()
    return -(x.view(-1) * mask.view(-1)).sum() / mask.sum()


@pytest.mark.parametrize("kind", KINDS)
def test_parity_with_distillm_formulas(kind):
    torch.manual_seed(1)
    s, t = torch.randn(2, 5, 40), torch.randn(2, 5, 40) * 2
    labels = torch.randint(0, 40, (2, 5))
    labels[0, :2] = -100
    mask = labels != -100
    ours = divergence(s, t, kind, 0.1)[mask].mean()
    theirs = _distillm(s, t, labels, kind, 0.1)
    if kind in ("fkl", "skl"):  # theirs is a cross-entropy: ours + H(p)
        entropy = -(F.softmax(t, -1) * F.log_softmax(t, -1)).sum(-1)[mask].mean()
        ours = ours + entropy
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5, abs=1e-6)


def test_parity_with_trl_generalized_jsd():
    gkd = pytest.importorskip("trl.experimental.gkd")
    torch.manual_seed(2)
    s, t = torch.randn(2, 6, 30), torch.randn(2, 6, 30)
    labels = torch.randint(0, 30, (2, 6))
    labels[1, :3] = IGNORE
    mask = labels != IGNORE
    jsd = gkd.GKDTrainer.generalized_jsd_loss

    def ours(kind, a):
        return divergence(s, t, kind, a)[mask].mean()

    # β = 0: KL(teacher ‖ student); β = 1: KL(student ‖ teacher); between: β·KL(p‖m) + (1−β)·KL(q‖m),
    # m = βp + (1−β)q, i.e. β·SKL(α=β) + (1−β)·SRKL(α=1−β)
    assert float(jsd(s, t, labels, beta=0.0)) == pytest.approx(float(ours("fkl", 0.1)), rel=1e-5)
    assert float(jsd(s, t, labels, beta=1.0)) == pytest.approx(float(ours("rkl", 0.1)), rel=1e-5)
    for beta in (0.1, 0.5, 0.9):
        want = beta * ours("skl", beta) + (1 - beta) * ours("srkl", 1 - beta)
        assert float(jsd(s, t, labels, beta=beta)) == pytest.approx(float(want), rel=1e-5)


# -- stored teacher top-k ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_topk_exact_when_the_tail_is_one_token(kind):
    torch.manual_seed(3)
    s, t = torch.randn(4, 12), torch.randn(4, 12)
    ids, logp, tail = teacher_topk(t, 11)  # the tail bucket holds exactly one token
    assert torch.allclose(topk_divergence(s, ids, logp, tail, kind), divergence(s, t, kind), atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_topk_is_a_lower_bound(kind):
    torch.manual_seed(4)
    s, t = torch.randn(8, 64), torch.randn(8, 64) * 3
    full = divergence(s, t, kind)
    prev = torch.zeros_like(full)
    for k in (1, 4, 16, 63):
        ids, logp, tail = teacher_topk(t, k)
        approx = topk_divergence(s, ids, logp, tail, kind)
        assert (approx <= full + 1e-5).all() and (approx >= -1e-6).all()
        assert (approx >= prev - 1e-5).all()  # a finer lumping never loses divergence
        prev = approx
    assert torch.allclose(prev, full, atol=1e-5)


def test_teacher_topk_masses_sum_to_one():
    t = torch.randn(3, 100)
    _, logp, tail = teacher_topk(t, 5)
    assert torch.allclose(logp.exp().sum(-1) + tail.exp(), torch.ones(3), atol=1e-6)


# -- objective: the trainer's share convention and label alignment ------------------------------
class _Fixed(torch.nn.Module):
    """A 'model' whose logits at position t are a fixed function of the token at t."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, ids, head=None):
        if head is not None:  # rows of the table as hidden states under an identity head
            eye = torch.eye(self.table.shape[-1])
            return type("Out", (), {"logits": None, "head": head(self.table[ids], eye, 1), "mtp_head": None})()
        return type("Out", (), {"logits": self.table[ids]})()


def test_objective_shares_sum_to_the_global_token_mean():
    torch.manual_seed(5)
    V = 9
    student, teacher = _Fixed(torch.randn(V, V)), _Fixed(torch.randn(V, V))
    ids = torch.randint(0, V, (3, 6))
    labels = ids.clone()
    labels[0, :3] = IGNORE  # prompt
    labels[1, :2] = IGNORE
    labels[2, 4:] = IGNORE  # padding after the response
    obj = DistillObjective(teacher, "srkl", 0.1, ce_weight=0.25)
    parts = [{"input_ids": ids[:1], "labels": labels[:1]}, {"input_ids": ids[1:], "labels": labels[1:]}]
    totals = sum(obj.targets(b) for b in parts)
    assert float(totals[0]) == (5 - 2) + (5 - 1) + 3  # targets are labels[1:] != IGNORE
    outs = [obj(student, b, totals) for b in parts]
    loss = sum(o.loss for o in outs).detach()
    # the direct global mean: logits at t against the teacher at t, where labels[t + 1] is set
    mask = labels[:, 1:] != IGNORE
    s, t = student.table[ids][:, :-1][mask], teacher.table[ids][:, :-1][mask]
    s, t = s.detach(), t.detach()
    div = divergence(s, t, "srkl", 0.1).mean()
    ce = F.cross_entropy(s, labels[:, 1:][mask])
    assert float(loss) == pytest.approx(float(0.75 * div + 0.25 * ce), rel=1e-6)
    assert float(sum(o.metrics["kl"] for o in outs)) == pytest.approx(float(div), rel=1e-6)
    # a scalar the data source puts in each batch comes out as itself after the trainer's sum
    parts = [dict(b, off_policy_prob=torch.tensor([0.3])) for b in parts]
    assert float(sum(obj(student, b, totals).metrics["off_policy_prob"] for b in parts)) == pytest.approx(0.3)


def test_objective_is_zero_against_itself_and_uses_stored_topk():
    torch.manual_seed(6)
    V = 7
    model = _Fixed(torch.randn(V, V))
    ids = torch.randint(0, V, (2, 5))
    labels = ids.clone()
    labels[:, :2] = IGNORE
    totals = torch.tensor([6.0])
    batch = {"input_ids": ids, "labels": labels}
    assert float(DistillObjective(model, "skl")(model, batch, totals).loss.detach()) == pytest.approx(0.0, abs=1e-6)
    # the same teacher as stored top-k (k = V − 1: exact) gives the same loss as the live teacher
    teacher = _Fixed(torch.randn(V, V))
    tid, tlp, tail = teacher_topk(teacher.table[ids], V - 1)
    stored = dict(batch, teacher_ids=tid, teacher_logp=tlp, teacher_tail=tail)
    live = DistillObjective(teacher, "fkl")(model, batch, totals).loss.detach()
    assert float(DistillObjective(None, "fkl")(model, stored, totals).loss.detach()) == pytest.approx(float(live), rel=1e-5)


def test_bad_settings_are_errors():
    with pytest.raises(ValueError, match="distill.loss"):
        DistillObjective(None, "kld")
    with pytest.raises(ValueError, match="alpha"):
        DistillObjective(None, "skl", alpha=1.5)
