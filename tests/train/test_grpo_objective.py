"""GRPO objective: group-normalised advantages, the clipped-ratio loss with k3 KL and each loss
aggregation — against a hand computation always, and against TRL GRPOTrainer's `_compute_loss`
on the same fixed log-probs, old log-probs, advantages and mask where TRL is installed."""

from __future__ import annotations

import math
import types

import pytest
import torch

from kollm.train.objectives.grpo import (
    GRPOObjective,
    aggregate,
    group_advantages,
    per_token_loss,
    token_logps,
)

# two sequences, three completion positions; the second has a padded last position
LOGPS = torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -1.2, -0.7]], dtype=torch.float64)
OLD = torch.tensor([[-1.5, -0.5, -1.7], [-0.1, -1.0, -0.7]], dtype=torch.float64)
REF = torch.tensor([[-1.2, -0.4, -2.2], [-0.2, -1.5, -0.9]], dtype=torch.float64)
ADV = torch.tensor([1.0, -0.5], dtype=torch.float64)
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float64)
MAX_LEN = 4


def hand_token_losses(beta: float, eps: float = 0.2) -> list[list[float]]:
    out = []
    for i in range(2):
        row = []
        for t in range(3):
            r = math.exp(LOGPS[i, t] - OLD[i, t])
            a = float(ADV[i])
            loss = -min(r * a, min(max(r, 1 - eps), 1 + eps) * a)
            d = float(REF[i, t] - LOGPS[i, t])
            row.append(loss + beta * (math.exp(d) - d - 1))
        out.append(row)
    return out


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_equals_a_hand_computation_for_every_aggregation(beta):
    L = hand_token_losses(beta)
    m = MASK.tolist()
    tok = [[L[i][t] * m[i][t] for t in range(3)] for i in range(2)]
    n_tok = sum(map(sum, m))
    expected = {
        "grpo": (sum(tok[0]) / sum(m[0]) + sum(tok[1]) / sum(m[1])) / 2,
        "dapo": sum(map(sum, tok)) / n_tok,
        "bnpo": sum(map(sum, tok)) / n_tok,
        "dr_grpo": sum(map(sum, tok)) / (2 * MAX_LEN),
    }
    loss, kl, region = per_token_loss(LOGPS, OLD, ADV, 0.2, 0.2, beta, REF)
    for lt, want in expected.items():
        got = aggregate(loss, MASK, lt, 2, n_tok, MAX_LEN)
        assert float(got) == pytest.approx(want, abs=1e-12), lt
    # ratios: e^0.5 = 1.65 > 1.2 with A > 0 (clipped), e^-0.3 = 0.74 < 0.8 with A < 0 (clipped),
    # e^-0.2 = 0.82 (not clipped), the rest 1 or masked
    assert region.tolist() == [[True, False, False], [False, False, False]]
    assert (region & (MASK > 0)).sum() == 1


def test_loss_splits_over_micro_batches_into_the_same_total():
    loss, _, _ = per_token_loss(LOGPS, OLD, ADV, 0.2, 0.2)
    n_tok = float(MASK.sum())
    for lt in ("grpo", "dapo", "dr_grpo"):
        whole = aggregate(loss, MASK, lt, 2, n_tok, MAX_LEN)
        parts = aggregate(loss[:1], MASK[:1], lt, 2, n_tok, MAX_LEN) + aggregate(loss[1:], MASK[1:], lt, 2, n_tok, MAX_LEN)
        assert float(parts) == pytest.approx(float(whole), abs=1e-12)


def test_group_advantages_are_normalised_per_group():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    a = group_advantages(r, 4)
    std = math.sqrt(((0.5 ** 2) * 4) / 3)  # Bessel-corrected, as TRL
    assert a[:4].tolist() == pytest.approx([x / (std + 1e-4) for x in (0.5, -0.5, -0.5, 0.5)], abs=1e-6)
    assert a[4:].tolist() == [0.0] * 4  # a group where every sample scores the same teaches nothing
    assert group_advantages(r, 4, scale=False)[:2].tolist() == [0.5, -0.5]
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(r, 3)


def test_token_logps_are_log_softmax_of_the_previous_position():
    torch.manual_seed(0)
    logits, ids = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    lp = token_logps(logits, ids, temperature=0.7)
    ref = torch.log_softmax(logits / 0.7, -1)
    assert lp[:, 0].abs().max() == 0
    for t in range(1, 5):
        assert torch.allclose(lp[:, t], ref[torch.arange(2), t - 1, ids[:, t]], atol=1e-6)


class _Model(torch.nn.Module):
    """Logits that make token_logps return given log-probs: a fixed table, one row per position."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits)

    def forward(self, ids, head=None):
        if head is not None:  # the table as hidden states under an identity head: logits = the table
            eye = torch.eye(self.logits.shape[-1])
            return types.SimpleNamespace(logits=None, head=head(self.logits, eye, 1), mtp_head=None)
        return types.SimpleNamespace(logits=self.logits, mtp_logits=None)


def test_objective_metrics_and_gradient_direction():
    torch.manual_seed(0)
    B, T, V = 4, 6, 5
    ids = torch.randint(0, V, (B, T))
    model = _Model(torch.randn(B, T, V))
    mask = torch.zeros(B, T)
    mask[:, 3:] = 1
    mask[3, 5] = 0
    batch = {"input_ids": ids, "completion_mask": mask, "advantages": torch.tensor([1.0, -1.0, 0.5, 0.0]),
             "rewards": torch.tensor([1.0, 0.0, 1.0, 0.5]), "reward_std": torch.full((B,), 0.5)}
    obj = GRPOObjective("grpo", max_completion_length=3)
    out = obj(model, batch, obj.targets(batch))
    assert obj.targets(batch).tolist() == [4.0, 11.0]
    assert float(out.metrics["reward_mean"]) == pytest.approx(0.625)
    assert float(out.metrics["reward_std"]) == pytest.approx(0.5)
    assert float(out.metrics["response_len"]) == pytest.approx(11 / 4)
    assert float(out.metrics["clip_frac"]) == 0.0 and float(out.metrics["kl"]) == 0.0
    # with π_old = π_θ the loss is −mean(A) and the gradient raises log π of positive-advantage tokens
    assert float(out.loss.detach()) == pytest.approx(-(1.0 - 1.0 + 0.5 + 0.0) / 4, abs=1e-6)
    out.loss.backward()
    lp = token_logps(model.logits.detach(), ids)
    step = token_logps(model.logits.detach() - 0.1 * model.logits.grad, ids)
    assert ((step - lp)[0, 3:] > 0).all() and ((step - lp)[1, 3:] < 0).all()


# -- parity with TRL ---------------------------------------------------------------------------
trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer", reason="trl not installed (bench extra)")


class _Accel:
    num_processes = 1

    def reduce(self, t, reduction="sum"):
        return t

    def gather(self, t):
        return t

    gather_for_metrics = gather


def _trl_loss(loss_type: str, beta: float, logps: torch.Tensor, n_items: float) -> torch.Tensor:
    """TRL's `_compute_loss` on fixed inputs: its log-prob computation is replaced by ours (the
    inputs), everything after it — ratio, clipping, KL, aggregation — is TRL's own code."""
    from collections import defaultdict

    args = types.SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1)
    fake = types.SimpleNamespace(
        loss_type=loss_type, beta=beta, epsilon_low=0.2, epsilon_high=0.2, importance_sampling_level="token",
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, use_vllm=False,
        vllm_importance_sampling_correction=False, model=types.SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, max_completion_length=MAX_LEN, accelerator=_Accel(), args=args,
        _entropy_bonus_enabled=False, aux_loss_enabled=False, _metrics={"train": defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None))
    inputs = {"prompt_ids": torch.zeros(2, 1, dtype=torch.long), "prompt_mask": torch.ones(2, 1),
              "completion_ids": torch.zeros(2, 3, dtype=torch.long), "completion_mask": MASK,
              "advantages": ADV, "old_per_token_logps": OLD, "ref_per_token_logps": REF,
              "num_items_in_batch": MASK.sum()}
    return trl_grpo.GRPOTrainer._compute_loss(fake, None, inputs)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_and_gradient_equal_trl_grpo_trainer(loss_type, beta):
    n_tok = float(MASK.sum())
    ours_lp = LOGPS.clone().requires_grad_(True)
    loss, _, _ = per_token_loss(ours_lp, OLD, ADV, 0.2, 0.2, beta, REF)
    ours = aggregate(loss, MASK, loss_type, 2, n_tok, MAX_LEN)
    theirs_lp = LOGPS.clone().requires_grad_(True)
    theirs = _trl_loss(loss_type, beta, theirs_lp, n_tok)
    assert float(ours.detach()) == pytest.approx(float(theirs.detach()), abs=1e-12)
    ours.backward()
    theirs.backward()
    assert torch.allclose(ours_lp.grad, theirs_lp.grad, atol=1e-12)
