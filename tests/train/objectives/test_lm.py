"""The pretraining loss (LMObjective, through the chunked head): next-token and MTP cross entropy
computed here by hand from log-softmax, MTP targets never across an isolated document."""

from __future__ import annotations

import torch

from kollm.data import IGNORE
from kollm.model import build_model, get_preset
from kollm.train.objectives.lm import LMObjective, shifted_targets


def _loss(model, ids, doc, alpha):
    objective = LMObjective("document", mtp_alpha=alpha)
    batch = {"input_ids": ids, "labels": ids, "doc_ids": doc}
    return objective(model, batch, objective.targets(batch))


def test_mtp_loss_combines_and_reaches_the_mtp_block():
    torch.manual_seed(0)
    model = build_model(get_preset("tiny-sandwich-mtp"))
    ids = torch.randint(0, 512, (2, 32))
    doc = torch.tensor([[0] * 16 + [1] * 16] * 2)
    out = _loss(model, ids, doc, 0.2)
    torch.testing.assert_close(out.loss, out.metrics["ntp_loss"] + 0.2 * out.metrics["mtp_loss"])
    out.loss.backward()
    assert model.mtp.block.mlp.up_proj.weight.grad.abs().sum() > 0
    # The MTP mask drops the two positions before the boundary and the last two.
    n_mtp = int((shifted_targets(ids, 2, doc, isolate=True) != IGNORE).sum())
    assert n_mtp == 2 * (32 - 4)


def test_lm_loss_is_the_shifted_cross_entropy_by_hand():
    """NTP: position t predicts token t+1; MTP: t+2, never across an isolated document; both token
    means over their own targets."""
    torch.manual_seed(0)
    model = build_model(get_preset("tiny-sandwich-mtp"))
    ids = torch.randint(0, 512, (2, 12))
    doc = torch.tensor([[0] * 5 + [1] * 7, [0] * 12])
    out = model(ids, doc_ids=doc, mask_policy="document")
    lp, lp2 = out.logits.log_softmax(-1), out.mtp_logits.log_softmax(-1)
    ntp = -torch.stack([lp[b, t, ids[b, t + 1]] for b in range(2) for t in range(11)]).mean()
    mtp = -torch.stack([lp2[b, t, ids[b, t + 2]] for b in range(2) for t in range(10)
                        if doc[b, t] == doc[b, t + 2]]).mean()
    loss = _loss(model, ids, doc, 0.2)
    torch.testing.assert_close(loss.metrics["ntp_loss"], ntp)
    torch.testing.assert_close(loss.metrics["mtp_loss"], mtp)
    torch.testing.assert_close(loss.loss, ntp + 0.2 * mtp)
