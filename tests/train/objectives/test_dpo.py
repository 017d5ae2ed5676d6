"""DPO objective: hand-computed losses for the three variants, ln 2 when policy = reference, and
metrics that are global means whatever the micro-batch split."""

import math

import pytest
import torch

from kollm.model.config import get_preset
from kollm.model.transformer import build_model
from kollm.train.objectives.dpo import DPOObjective, completion_logps, dpo_loss, sequence_logps


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_completion_logps_by_hand():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0], [5.0, 5.0, 5.0]]])
    labels = torch.tensor([[-100, 2, 0, 1]])  # position 0 is prompt; tokens 1..3 are completion
    sums, counts = completion_logps(logits, labels)

    def lsm(row, i):
        return row[i] - math.log(sum(math.exp(v) for v in row))

    want = lsm([0.0, 1.0, 2.0], 2) + lsm([1.0, 0.0, 0.0], 0) + lsm([0.0, 0.0, 3.0], 1)
    assert sums.item() == pytest.approx(want, abs=1e-6)
    assert counts.tolist() == [3.0]


def test_losses_by_hand():
    # two pairs: policy/ref log-probs of chosen (rows 0,1) and rejected (rows 2,3)
    pol = torch.tensor([-10.0, -4.0, -12.0, -3.0])
    ref = torch.tensor([-11.0, -4.5, -11.5, -2.0])
    n = torch.tensor([5.0, 2.0, 4.0, 1.0])
    beta = 0.1
    hw, hl = [1.0, 0.5], [-0.5, -1.0]  # policy − ref
    sig, r_w, r_l = dpo_loss(pol, ref, n, beta, "sigmoid")
    assert sig.tolist() == pytest.approx([-_logsig(beta * (a - b)) for a, b in zip(hw, hl)], abs=1e-6)
    assert r_w.tolist() == pytest.approx([0.1, 0.05]) and r_l.tolist() == pytest.approx([-0.05, -0.1])
    ipo, _, _ = dpo_loss(pol, ref, n, beta, "ipo")
    want = [(1.0 / 5 - (-0.5) / 4 - 1 / (2 * beta)) ** 2, (0.5 / 2 - (-1.0) / 1 - 5.0) ** 2]
    assert ipo.tolist() == pytest.approx(want, rel=1e-6)
    norm, _, _ = dpo_loss(pol, ref, n, beta, "sigmoid_norm")
    assert norm.tolist() == pytest.approx([-_logsig(beta * (1 / 5 + 0.5 / 4)), -_logsig(beta * (0.25 + 1.0))],
                                          abs=1e-6)


def _batch(B=3, T=12, V=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (2 * B, T), generator=g)
    labels = ids.clone()
    labels[:, :4] = -100  # prompt
    labels[B:, -2:] = -100  # rejected rows shorter (padding)
    return {"input_ids": ids, "labels": labels}


def test_first_step_loss_is_ln2_and_rewards_zero():
    torch.manual_seed(0)
    model = build_model(get_preset("tiny"))
    batch = _batch()
    batch["ref_logps"] = sequence_logps(model, batch)
    obj = DPOObjective(beta=0.1)
    out = obj(model, batch, obj.targets(batch))
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert out.metrics["chosen_reward"].item() == 0 and out.metrics["margin"].item() == 0
    out.loss.backward()  # a gradient flows although the loss is at its starting value
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_metrics_are_global_means_over_micro_batches():
    torch.manual_seed(0)
    model = build_model(get_preset("tiny"))
    batch = _batch(B=4, seed=1)
    ref = sequence_logps(model, batch) + torch.tensor([0.3, -0.2, 0.1, 0.5, -0.4, 0.2, 0.0, 0.6])
    whole = {**batch, "ref_logps": ref}
    obj = DPOObjective(beta=0.5)
    full = obj(model, whole, obj.targets(whole))
    parts = []
    for sel in ([0, 1, 2], [3]):  # pairs 0-2 and pair 3: rows (chosen i, rejected i)
        rows = sel + [i + 4 for i in sel]
        parts.append({k: v[rows] for k, v in whole.items()})
    totals = sum(obj.targets(p) for p in parts)
    outs = [obj(model, p, totals) for p in parts]
    assert sum(o.loss.item() for o in outs) == pytest.approx(full.loss.item(), abs=1e-6)
    for k in ("reward_accuracy", "chosen_reward", "rejected_reward", "margin"):
        assert sum(o.metrics[k].item() for o in outs) == pytest.approx(full.metrics[k].item(), abs=1e-6)
    # the reward of each pair is β·(policy − ref): ref was shifted by the numbers above
    assert full.metrics["chosen_reward"].item() == pytest.approx(-0.5 * (0.3 - 0.2 + 0.1 + 0.5) / 4, abs=1e-6)
    assert full.metrics["reward_accuracy"].item() == pytest.approx(0.5)  # h_w > h_l: pairs 1 and 3


def test_reference_model_gives_the_same_loss_as_stored_logps():
    torch.manual_seed(0)
    model = build_model(get_preset("tiny"))
    ref_model = build_model(get_preset("tiny"))
    batch = _batch(seed=2)
    stored = {**batch, "ref_logps": sequence_logps(ref_model, batch)}
    a = DPOObjective()(model, stored, torch.tensor([3.0]))
    b = DPOObjective(reference=ref_model)(model, batch, torch.tensor([3.0]))
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-6)  # float32, batched differently: ~8 ulps


def test_bad_loss_name():
    with pytest.raises(ValueError, match="dpo.loss"):
        DPOObjective(loss="hinge")
