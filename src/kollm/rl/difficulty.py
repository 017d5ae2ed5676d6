"""Prompt difficulty for RLVR (Trillion 7B §4: "using problems with appropriate difficulty levels ...
crucial"; the levels are not published): each prompt's pass rate over G sampled completions, and
the prompts whose rate lies strictly between two bounds. A group that all pass or all fail has zero
advantage everywhere and gives GRPO no gradient. The command, `kollm grpo filter`, is
kollm.train.grpo_filter."""

from __future__ import annotations

from collections.abc import Callable


def pass_rates(engine, tokenizer, prompts, rewards, group_size: int, pass_reward: float = 1.0, seed: int = 0,
               batch_prompts: int = 16, progress: Callable[[int, int], None] | None = None) -> list[tuple[int, int]]:
    """(passes, scored) per prompt of a kollm.train.grpo_data.PromptSet; `engine.sample(ids, G, seed)`
    as kollm.rl.rollout's. A completion no reward applies to is not counted in `scored`."""
    out: list[tuple[int, int]] = []
    n = len(prompts)
    for s in range(0, n, batch_prompts):
        idx = list(range(s, min(n, s + batch_prompts)))
        groups = engine.sample([prompts.ids[i] for i in idx], group_size, seed + s)
        for i, group in zip(idx, groups):
            texts = [tokenizer.decode(c, skip_special_tokens=True) for c in group]
            totals, parts = rewards(texts, [prompts.rows[i]] * len(texts))
            applies = [any(v[j] is not None for v in parts.values()) for j in range(len(texts))]
            out.append((sum(1 for t, a in zip(totals, applies) if a and t >= pass_reward), sum(applies)))
        if progress is not None:
            progress(len(out), n)
    return out


def keep(counts: list[tuple[int, int]], low: float = 0.0, high: float = 1.0) -> list[int]:
    """Indices whose pass rate lies strictly between low and high (a prompt nothing scored: never)."""
    return [i for i, (k, m) in enumerate(counts) if m and low < k / m < high]


__all__ = ["keep", "pass_rates"]
