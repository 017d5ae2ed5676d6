"""Merge methods: one output tensor from the inputs' tensors of the same name.

The arithmetic follows mergekit 0.1.5 (`merge_methods/linear.py`, `slerp.py`,
`generalized_task_arithmetic.py`, `sparsify.py`) operation for operation, so that results agree
tensor by tensor (tests/merge/test_parity.py checks it against mergekit itself):

- linear (Wortsman et al. 2022, model soups): Σ wᵢθᵢ, divided by Σ wᵢ when `normalize`
  (default true), accumulated in float32 (float64 for float64 inputs), cast back.
- slerp (DESIGN.md §4): on the whole tensor flattened, in float32: normalise, dot; |dot| > 0.9995
  interpolates linearly, otherwise sin((1−t)θ)/sin θ·v0 + sin(tθ)/sin θ·v1 on the
  un-normalised tensors; v0 is the base model. Norms and dot are taken over chunks of 2²⁰
  elements, as mergekit does.
- task_arithmetic (Ilharco et al. 2023): base + λ·Σ wᵢ(θᵢ − base) [/ Σ wᵢ when normalize].
- ties (Yadav et al. 2023): each delta keeps its top `density` fraction by magnitude (mergekit's
  argsort selection; `fast_trim: true` is kollm's faster kthvalue trim, see _magnitude), is
  weighted, the elected sign per element is that of the weighted sum, and only deltas with the
  elected sign are summed, divided (normalize, default true) by the sum of their weights.
Task arithmetic and TIES compute in the inputs' dtype, as mergekit does.

Each method is a `Method`: its parameters (name, type, default, scope) and whether it needs a
base model; `plan.py` resolves the parameters per tensor, `run.py` calls `fn`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

_CHUNK = 1 << 20  # mergekit's slerp chunk (elements)


@dataclass(frozen=True)
class Param:
    name: str
    kind: type  # float or bool
    default: object = None  # None: required
    per_input: bool = False  # one value per input model (evaluated on that input's tensor name)
    non_base: bool = False  # per-input, but the base model takes none


@dataclass(frozen=True)
class Method:
    name: str
    params: tuple[Param, ...]
    base: str  # "required" | "ignored"
    fn: Callable[..., torch.Tensor]
    n_inputs: int | None = None  # exact count when fixed (slerp: 2)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def linear(tensors: list[torch.Tensor], weight: list[float], normalize: bool = True) -> torch.Tensor:
    """Σ wᵢθᵢ (/ Σ wᵢ): the uniform case is a model soup.

    Element for element mergekit's arithmetic (fp32 zeros, addcmul per input, divide, cast back),
    done over 2²⁰-element chunks so the fp32 accumulator is a chunk, not a second copy of the tensor.
    """
    first = tensors[0]
    if not first.is_floating_point():
        raise TypeError("linear merging requires floating-point tensors")
    dtype = _compute_dtype(first)
    w = torch.tensor(weight, dtype=dtype)
    coefs, total = w.unbind(0), w.sum()
    flat = [t.reshape(-1) for t in tensors]
    out = torch.empty(first.numel(), dtype=first.dtype)
    for s in range(0, first.numel(), _CHUNK):
        acc = torch.zeros(min(_CHUNK, first.numel() - s), dtype=dtype)
        for t, c in zip(flat, coefs):
            acc.addcmul_(t[s:s + _CHUNK], c)
        if normalize:
            acc.div_(total)
        out[s:s + _CHUNK] = acc
    return out.reshape(first.shape)


def slerp(v0: torch.Tensor, v1: torch.Tensor, t: float, dot_threshold: float = 0.9995,
          eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of two tensors seen as flat vectors; t=0 gives v0 (the base).

    Three passes over 2²⁰-element chunks (norms; dot of the normalised chunks; the combination),
    element for element mergekit's operations. Tensors up to 64 chunks keep their fp32 chunks
    from the first pass for the other two (1.5× less CPU; up to 2 × 256 MB of scratch).
    """
    if not v0.is_floating_point():
        raise TypeError("SLERP requires floating-point tensors")
    dtype = _compute_dtype(v0)
    a, b = v0.reshape(-1), v1.reshape(-1)
    tt = torch.tensor(t, dtype=dtype)
    if a.numel() == 0:
        return v0.clone()
    spans = range(0, a.numel(), _CHUNK)
    cache = len(spans) <= 64
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    na, nb = [], []
    for s in spans:
        x, y = a[s:s + _CHUNK].to(dtype), b[s:s + _CHUNK].to(dtype)
        na.append(torch.linalg.vector_norm(x))
        nb.append(torch.linalg.vector_norm(y))
        if cache:
            xs.append(x)
            ys.append(y)

    def chunk(i: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (xs[i], ys[i]) if cache else (a[s:s + _CHUNK].to(dtype), b[s:s + _CHUNK].to(dtype))

    # Norm of chunk norms (mergekit's order of summation, within float32 rounding of a flat norm).
    norm_a = torch.linalg.vector_norm(torch.stack(na))
    norm_b = torch.linalg.vector_norm(torch.stack(nb))
    norm_a = torch.where(norm_a > eps, norm_a, 1)
    norm_b = torch.where(norm_b > eps, norm_b, 1)
    parts = []
    for i, s in enumerate(spans):
        x, y = chunk(i, s)
        parts.append((x / norm_a).mul_(y / norm_b).sum())
    dot = torch.stack(parts).sum().clamp(-1, 1)
    if dot.abs() > dot_threshold:  # (anti)collinear: sin θ ≈ 0, lerp is exact enough
        ca, cb = 1 - tt, tt
    else:
        theta = torch.acos(dot)
        sin_theta = torch.sin(theta)
        ca, cb = torch.sin((1 - tt) * theta) / sin_theta, torch.sin(tt * theta) / sin_theta
    out = torch.empty_like(a)
    for i, s in enumerate(spans):
        x, y = chunk(i, s)
        out[s:s + _CHUNK] = (ca * x).add_(cb * y)
    return out.reshape(v0.shape)


def _magnitude(delta: torch.Tensor, density: float, rescale: bool, fast_trim: bool = False) -> torch.Tensor:
    """Keep the `density` fraction of largest |delta| (k = max(1, int(density·n))), zero the rest.

    Default: mergekit's selection, the first k of `argsort(|delta|, descending=True)` (O(n log n)),
    so the kept entries are mergekit's also where several |delta| tie at the cut — in bf16 they
    often do (on a 3M-element bf16 tensor the two trims differed in 7,172 entries, max |Δ| 0.05).
    `fast_trim` (opt-in, kollm's own): the k-th largest value by kthvalue (O(n)), everything above
    it, then the lowest-index entries equal to it. It keeps the same magnitudes, but at a tie at
    the cut possibly other entries than mergekit; identical when no two |delta| tie at the cut.
    """
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    n = delta.numel()
    k = max(1, int(density * n))
    w = delta.abs().reshape(-1)
    if w.device.type == "cpu":
        w = w.float()
    if fast_trim:
        cut = torch.kthvalue(w, n - k + 1).values  # the k-th largest
        keep = w > cut
        need = k - int(keep.sum())
        if need > 0:
            keep[torch.nonzero(w == cut).reshape(-1)[:need]] = True
    else:
        keep = torch.zeros(n, dtype=torch.bool, device=w.device)
        keep[torch.argsort(w, descending=True)[:k]] = True
    masked = delta * keep.reshape_as(delta).to(delta.dtype)
    if rescale:  # match the l1 norm of the unpruned delta (DARE-style rescaling)
        before, after = delta.abs().sum(), masked.abs().sum()
        if before >= 1e-7 and after >= 1e-7:
            masked = masked * (before / after)
    return masked


def _task_vectors(base: torch.Tensor, others: list[torch.Tensor], weight: list[float], density: list[float] | None,
                  rescale: bool, fast_trim: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    deltas = base.new_empty((len(others), *base.shape))
    for i, x in enumerate(others):
        d = x - base
        deltas[i] = _magnitude(d, density[i], rescale, fast_trim) if density is not None else d
    w = torch.tensor(weight, dtype=deltas.dtype)
    while w.dim() < deltas.dim():
        w = w.unsqueeze(-1)
    deltas.mul_(w)
    return deltas, w


def _finish(base: torch.Tensor, mixed: torch.Tensor, divisor: torch.Tensor, normalize: bool,
            lambda_: float) -> torch.Tensor:
    if normalize:
        mixed /= divisor
    if lambda_ != 1:
        mixed *= lambda_
    return (base + mixed).to(base.dtype)


def task_arithmetic(base: torch.Tensor, others: list[torch.Tensor], weight: list[float], normalize: bool = False,
                    lambda_: float = 1.0) -> torch.Tensor:
    """base + λ·Σ wᵢ(θᵢ − base), optionally divided by Σ wᵢ."""
    if not others:
        return base
    deltas, w = _task_vectors(base, others, weight, None, False)
    divisor = w.sum(dim=0)
    divisor[divisor.abs() < 1e-8] = 1
    return _finish(base, deltas.sum(dim=0), divisor, normalize, lambda_)


def ties(base: torch.Tensor, others: list[torch.Tensor], weight: list[float], density: list[float],
         normalize: bool = True, lambda_: float = 1.0, rescale: bool = False, int8_mask: bool = False,
         fast_trim: bool = False) -> torch.Tensor:
    """TIES-merging: trim (magnitude, `density`), elect sign (of the weighted sum), disjoint mean.

    `fast_trim`: kthvalue instead of mergekit's argsort in the trim (see _magnitude)."""
    if not others:
        return base
    deltas, w = _task_vectors(base, others, weight, density, rescale, fast_trim)
    mask_dtype = torch.int8 if int8_mask else base.dtype
    sign = deltas.sign().to(mask_dtype)
    elected = (deltas.sum(dim=0) >= 0).to(mask_dtype) * 2 - 1
    mask = sign == elected  # a trimmed (zero) entry has sign 0 and is never counted
    mixed = (deltas * mask).sum(dim=0)
    divisor = (w * mask).sum(dim=0)
    divisor[divisor == 0] = 1
    return _finish(base, mixed, divisor, normalize, lambda_)


# ---- the registry: what the planner needs to know about each method -------------------------
def _linear(tensors, base_index, p):
    return linear(tensors, p["weight"], p["normalize"])


def _slerp(tensors, base_index, p):
    return slerp(tensors[base_index], tensors[1 - base_index], p["t"])


def _split(tensors, base_index):
    return tensors[base_index], [t for i, t in enumerate(tensors) if i != base_index]


def _task_arithmetic(tensors, base_index, p):
    base, others = _split(tensors, base_index)
    return task_arithmetic(base, others, p["weight"], p["normalize"], p["lambda"])


def _ties(tensors, base_index, p):
    base, others = _split(tensors, base_index)
    return ties(base, others, p["weight"], p["density"], p["normalize"], p["lambda"], p["rescale"], p["int8_mask"],
                p["fast_trim"])


def _gta_params(normalize: bool) -> tuple[Param, ...]:
    return (Param("int8_mask", bool, False), Param("normalize", bool, normalize), Param("rescale", bool, False),
            Param("lambda", float, 1.0), Param("weight", float, None, per_input=True, non_base=True),
            Param("density", float, 1.0, per_input=True, non_base=True))


METHODS: dict[str, Method] = {
    "linear": Method("linear", (Param("weight", float, None, per_input=True), Param("normalize", bool, True)),
                     "ignored", _linear),
    "slerp": Method("slerp", (Param("t", float),), "required", _slerp, n_inputs=2),
    "task_arithmetic": Method("task_arithmetic", _gta_params(False), "required", _task_arithmetic),
    # fast_trim is kollm's (mergekit has no such parameter): see _magnitude.
    "ties": Method("ties", (*_gta_params(True), Param("fast_trim", bool, False)), "required", _ties),
}
