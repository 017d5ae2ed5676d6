"""`kollm grpo`: the command over both GRPO modules. `kollm grpo CONFIG` trains (kollm.train.grpo);
`kollm grpo filter CONFIG --out FILE` keeps the prompts of the right difficulty
(kollm.train.grpo_filter, which builds on kollm.train.grpo). It sits above them so that neither
imports the other's caller.
"""

from __future__ import annotations

from kollm.train import grpo, grpo_filter


def main(argv: list[str]) -> int:
    if argv and argv[0] == "filter":
        return grpo_filter.main(argv[1:])
    return grpo.main(argv)


__all__ = ["main"]
