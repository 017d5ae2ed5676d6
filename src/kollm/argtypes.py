"""argparse value types shared by the stages: a number out of range is refused at parse time,
naming the flag (`argument --workers: must be a positive integer, got 0`), instead of being
accepted and failing later or silently doing nothing."""

from __future__ import annotations

import argparse


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An int >= 1 (counts, sizes, workers, limits)."""
    return _int_at_least(text, 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    """An int >= 0 (few-shot counts: 0 is zero-shot)."""
    return _int_at_least(text, 0, "an integer >= 0")


def config_text(path) -> str:
    """A config file's text (YAML is UTF-8); a file that is not UTF-8 is a ValueError naming the file
    and the line of the first bad byte, not the decoder's bare "can't decode byte 0xff in position 609"."""
    from pathlib import Path

    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at line {line}, column {col}); "
                         "save the file as UTF-8") from None
