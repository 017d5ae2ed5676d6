"""Fixtures for the merge tests; helpers live in merge_helpers.py (tiny HF checkpoints)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # merge_helpers.py


@pytest.fixture(autouse=True)
def hf_offline(monkeypatch):
    # Model references are local directories; nothing may reach the Hub (mergekit probes it).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
