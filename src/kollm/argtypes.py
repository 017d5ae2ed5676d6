"""Command-line and config values shared by every layer: argparse types (a number out of range is
refused at parse time, naming the flag: `argument --workers: must be a positive integer, got 0`,
instead of being accepted and failing later or silently doing nothing), counts written `1.8T`,
config files read as UTF-8, and `--set KEY.PATH=VALUE` overrides."""

from __future__ import annotations

import argparse
import re

import yaml


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


_SUFFIX = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def parse_count(value, where: str) -> int:
    """2T, 1.8T, 60B, 2M, 4096 or 1.0e+12 → int."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected a count, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMBGT]?)\s*", str(value))
    if not m:
        raise ValueError(f"{where}: expected a count like 4096, 2M, 60B or 1.8T, got {value!r}")
    return int(round(float(m.group(1)) * _SUFFIX.get(m.group(2), 1)))


def _list_index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise KeyError(f"--set {key}: {part!r} is not an index of a {len(node)}-item list")
    return int(part)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`KEY.PATH=VALUE` command-line overrides (torchtitan style), VALUE read as YAML, so
    `data.shards=runs/x`, `phases.0.steps=8` and `model.overrides={mtp: true}` all work."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY.PATH=VALUE")
        node, *parents, last = [raw, *key.split(".")]
        for part in parents:
            node = node[_list_index(node, part, key)] if isinstance(node, list) else node.setdefault(part, {})
        node[_list_index(node, last, key) if isinstance(node, list) else last] = yaml.safe_load(text)
    return raw
