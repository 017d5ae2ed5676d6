"""Language mixture of a pretraining phase: Trillion 7B eq. 2.

    P(l) = α·|D_l| / Σ|D| + (1 − α)·β_l

|D_l| is language l's corpus size in tokens, α interpolates between sampling in proportion to
size (α = 1) and the upsampling distribution β (α = 0). β is a probability distribution over
known languages; languages it does not name get β = 0. The annealing phase of the report raises
the multilingual share (×3) by changing α/β per phase; the loader takes one mixture per phase.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def check_distribution(weights: Mapping[str, float], known: list[str] | set[str], what: str) -> None:
    """A distribution over known names: non-negative, finite, sums to 1 (1e-6), no unknown keys."""
    for name, w in weights.items():
        if name not in known:
            raise ValueError(f"{what}: unknown language {name!r} (known: {', '.join(sorted(known))})")
        if not (isinstance(w, int | float) and math.isfinite(w) and w >= 0):
            raise ValueError(f"{what}[{name!r}] = {w!r}: must be a finite number ≥ 0")
    total = sum(weights.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"{what} must sum to 1, sums to {total:.6g}")


def language_probs(sizes: Mapping[str, int], alpha: float = 1.0,
                   beta: Mapping[str, float] | None = None) -> dict[str, float]:
    """Sampling probability per language (eq. 2) from token counts `sizes`, in `sizes`' order."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha = {alpha!r}: must lie in [0, 1]")
    if any(n < 0 for n in sizes.values()):
        raise ValueError(f"corpus sizes must be ≥ 0: {dict(sizes)}")
    total = sum(sizes.values())
    if alpha > 0 and total == 0:
        raise ValueError("alpha > 0 needs a non-empty corpus (all language sizes are 0)")
    if beta is None:
        if alpha < 1:
            raise ValueError("beta (upsampling distribution) is required when alpha < 1")
        beta = {}
    else:
        check_distribution(beta, set(sizes), "beta")
    return {lang: (alpha * n / total if alpha > 0 else 0.0) + (1 - alpha) * beta.get(lang, 0.0)
            for lang, n in sizes.items()}
