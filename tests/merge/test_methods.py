"""Each merge method against a hand computation on tiny tensors."""

import math

import pytest
import torch

from kollm.merge.methods import linear, slerp, task_arithmetic, ties


def test_linear_weights_and_normalize():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -2.0])
    # (1·1 + 3·3)/4, (1·2 + 3·(−2))/4
    assert linear([a, b], [1.0, 3.0]).tolist() == [2.5, -1.0]
    assert linear([a, b], [1.0, 3.0], normalize=False).tolist() == [10.0, -4.0]


def test_linear_bf16_accumulates_in_fp32_and_returns_bf16():
    xs = [torch.full((4,), 1.0 + 2**-7 * i, dtype=torch.bfloat16) for i in range(3)]
    out = linear(xs, [1.0, 1.0, 1.0])
    assert out.dtype == torch.bfloat16
    assert out[0].item() == pytest.approx(1.0 + 2**-7, abs=0)  # exact mean, one rounding


def test_slerp_orthogonal_vectors_follow_the_arc():
    v0, v1 = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])  # θ = π/2; un-normalised endpoints
    out = slerp(v0, v1, 0.5)
    s = math.sin(math.pi / 4)
    # float32 sin/acos (vectorised kernels differ by CPU): a few ulps of the value, relative
    assert out.tolist() == pytest.approx([2 * s, s], rel=1e-6)
    out = slerp(v0, v1, 1 / 3)  # sin(π/3)·v0 + sin(π/6)·v1
    assert out.tolist() == pytest.approx([2 * math.sin(math.pi / 3), 0.5], abs=1e-6)
    assert slerp(v0, v1, 0.0).tolist() == pytest.approx(v0.tolist())
    assert slerp(v0, v1, 1.0).tolist() == pytest.approx(v1.tolist(), rel=1e-6, abs=1e-7)


def test_slerp_60_degrees_is_not_the_average():
    v0 = torch.tensor([1.0, 0.0])
    v1 = torch.tensor([0.5, math.sqrt(3) / 2])  # θ = 60°
    out = slerp(v0, v1, 0.5)
    # sin(30°)/sin(60°) on each: stays on the unit circle (norm 1), the average has norm cos 30°.
    c = 0.5 / (math.sqrt(3) / 2)
    assert out.tolist() == pytest.approx([c * 1.5, c * math.sqrt(3) / 2], abs=1e-6)
    assert out.norm().item() == pytest.approx(1.0, abs=1e-6)


def test_slerp_collinear_and_antipodal_fall_back_to_lerp():
    v0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    assert torch.allclose(slerp(v0, 3 * v0, 0.25), 0.75 * v0 + 0.25 * 3 * v0)
    assert torch.allclose(slerp(v0, -v0, 0.25), 0.75 * v0 - 0.25 * v0)


def test_slerp_shape_is_kept_and_tensor_is_one_vector():
    torch.manual_seed(0)
    v0, v1 = torch.randn(3, 5), torch.randn(3, 5)
    a, b = v0.flatten(), v1.flatten()
    theta = torch.acos(torch.dot(a / a.norm(), b / b.norm()))
    want = (torch.sin(0.3 * theta) * a + torch.sin(0.7 * theta) * b) / torch.sin(theta)
    got = slerp(v0, v1, 0.7)
    assert got.shape == (3, 5)
    assert torch.allclose(got.flatten(), want, atol=1e-6)


def test_task_arithmetic_by_hand():
    base = torch.tensor([1.0, 1.0, 1.0])
    x1, x2 = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([1.0, 3.0, -1.0])
    # 0.5·[1, −1, 0] + 1·[0, 2, −2] = [0.5, 1.5, −2]
    assert task_arithmetic(base, [x1, x2], [0.5, 1.0]).tolist() == [1.5, 2.5, -1.0]
    assert task_arithmetic(base, [x1, x2], [0.5, 1.0], normalize=True).tolist() == pytest.approx(
        [1 + 0.5 / 1.5, 2.0, 1 - 2 / 1.5])
    assert task_arithmetic(base, [x1, x2], [0.5, 1.0], lambda_=2.0).tolist() == [2.0, 4.0, -3.0]


def test_ties_trim_elect_disjoint_mean_by_hand():
    base = torch.ones(4)
    d1, d2 = torch.tensor([3.0, -1.0, 0.5, -2.0]), torch.tensor([-1.0, 2.0, 0.25, 4.0])
    # density 0.5 keeps the 2 largest |δ|: d1 → [3, 0, 0, −2], d2 → [0, 2, 0, 4]; weights 3 and 1:
    # weighted [9, 0, 0, −6] and [0, 2, 0, 4], sum [9, 2, 0, −2] → elected signs [+, +, +, −];
    # kept: d1 at 0 and 3, d2 at 1 → sums [9, 2, 0, −6] / weights [3, 1, 1 (none), 3].
    out = ties(base, [base + d1, base + d2], [3.0, 1.0], [0.5, 0.5])
    assert out.tolist() == [1 + 3.0, 1 + 2.0, 1 + 0.0, 1 - 2.0]
    # Without normalize the weighted deltas are summed as elected.
    out = ties(base, [base + d1, base + d2], [3.0, 1.0], [0.5, 0.5], normalize=False)
    assert out.tolist() == [10.0, 3.0, 1.0, -5.0]
    # density 1 keeps everything: sums [9−1, −3+2, 1.5+0.25, −6+4] elect [+, −, +, −].
    out = ties(base, [base + d1, base + d2], [3.0, 1.0], [1.0, 1.0])
    assert out.tolist() == pytest.approx([1 + 9 / 3, 1 - 3 / 3, 1 + 1.75 / 4, 1 - 6 / 3])


def test_ties_tied_vote_elects_positive():
    # mergekit elects sign(Σ) with Σ = 0 counted as positive: only the positive delta survives.
    base = torch.zeros(1)
    assert ties(base, [torch.tensor([2.0]), torch.tensor([-2.0])], [1.0, 1.0], [1.0, 1.0]).tolist() == [2.0]


def test_magnitude_trim_equals_mergekits_argsort_cut():
    from kollm.merge.methods import _magnitude

    torch.manual_seed(0)
    d = torch.randn(64, 33)
    for density in (0.01, 0.3, 0.5, 0.99):
        k = max(1, int(density * d.numel()))
        mask = torch.zeros(d.numel())
        mask[torch.argsort(d.abs().reshape(-1), descending=True)[:k]] = 1  # mergekit's sparsify.magnitude
        assert torch.equal(_magnitude(d, density, False), d * mask.reshape_as(d))
    ties_ = torch.tensor([3.0, -1.0, 1.0, 2.0, -1.0, 1.0])  # the cut falls inside three equal |δ| = 1
    out = _magnitude(ties_, 0.5, False, fast_trim=True)  # k = 3: 3 and 2, then the first |δ| = 1
    assert out.tolist() == [3.0, -1.0, 0.0, 2.0, 0.0, 0.0]
    # The default keeps argsort's choice among the tied entries, whatever it is: still 3, 2 and one |δ| = 1.
    default = _magnitude(ties_, 0.5, False)
    assert default[[0, 3]].tolist() == [3.0, 2.0] and int((default != 0).sum()) == 3
    assert _magnitude(ties_, 0.5, True).abs().sum().item() == pytest.approx(ties_.abs().sum().item())  # l1 rescale
