"""SFT objective: the token mean of −log p over trained targets (hand-computed), independent of how
the step is split into micro-batches, never predicting across packed conversations."""

import math

import torch

from kollm.model.config import get_preset
from kollm.model.transformer import build_model
from kollm.train.objectives.lm import IGNORE
from kollm.train.objectives.sft import SFTObjective


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 512, (4, 24), generator=g)
    doc_ids = torch.tensor([[0] * 10 + [1] * 14, [0] * 24, [0] * 6 + [1] * 6 + [2] * 8 + [-1] * 4, [0] * 20 + [-1] * 4])
    trained = torch.rand(4, 24, generator=g) < 0.5
    trained[doc_ids < 0] = False
    trained[0, 10] = True  # the first token of a conversation: nothing before it in its conversation predicts it
    return {"input_ids": ids, "labels": torch.where(trained, ids, IGNORE), "doc_ids": doc_ids}


def test_loss_is_the_token_mean_over_trained_targets_by_hand():
    torch.manual_seed(0)
    model = build_model(get_preset("tiny")).eval()
    batch, obj = _batch(), SFTObjective()
    n = obj.targets(batch)
    out = obj(model, batch, n)
    with torch.no_grad():
        logits = model(batch["input_ids"], doc_ids=batch["doc_ids"], mask_policy="document",
                       restart_positions=True).logits
    total, count = 0.0, 0
    for b in range(4):
        for t in range(23):
            same_doc = batch["doc_ids"][b, t] == batch["doc_ids"][b, t + 1]
            y = int(batch["labels"][b, t + 1])
            if y != IGNORE and same_doc:
                total -= float(torch.log_softmax(logits[b, t].double(), -1)[y])
                count += 1
    assert count == int(n.item()) == int(out.metrics["trained_tokens"])
    # the last token of a conversation does not learn the next conversation's first token (row 0, t=9)
    starts = batch["doc_ids"][:, 1:] != batch["doc_ids"][:, :-1]
    trained = batch["labels"][:, 1:] != IGNORE
    assert count == int((trained & ~starts).sum()) and bool(trained[0, 9] & starts[0, 9])
    assert math.isclose(float(out.loss.detach()), total / count, rel_tol=1e-5)


def test_micro_batch_split_gives_the_same_step_loss_and_gradient():
    torch.manual_seed(0)
    model = build_model(get_preset("tiny"))
    batch, obj = _batch(1), SFTObjective()
    whole = obj(model, batch, obj.targets(batch))
    whole.loss.backward()
    g_whole = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    parts = [{k: v[:1] for k, v in batch.items()}, {k: v[1:] for k, v in batch.items()}]
    totals = sum(obj.targets(p) for p in parts)
    loss = 0.0
    for p in parts:
        out = obj(model, p, totals)
        out.loss.backward()
        loss += float(out.loss)
    assert math.isclose(loss, float(whole.loss), rel_tol=1e-5)
    for a, p in zip(g_whole, model.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-4, atol=1e-6)
