"""argparse value types shared by the stages: a number out of range is refused at parse time,
naming the flag (`argument --workers: must be a positive integer, got 0`), instead of being
accepted and failing later or silently doing nothing."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An int >= 1 (counts, sizes, workers, limits)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """An int >= 0 (few-shot counts: 0 is zero-shot)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value
