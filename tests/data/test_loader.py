"""Pretraining loader: the batch protocol the trainer codes against, exact resume across a phase
switch (per rank, through JSON), disjoint ranks, and clear errors for a mismatched checkpoint."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from kollm.data.loader import PhaseData, PretrainLoader
from kollm.data.shards import ShardWriter

STABLE = PhaseData(name="stable", seq_len=32, batch_size=4, alpha=0.5,
                   beta={"en": 0.4, "ko": 0.4, "ja": 0.2}, rho=0.5)
ANNEAL = PhaseData(name="anneal", seq_len=48, batch_size=3, alpha=0.2, beta={"en": 0.2, "ko": 0.6, "ja": 0.2},
                   rho=0.3, quality_threshold=0.3)
LONG = PhaseData(name="long", seq_len=128, batch_size=2, alpha=1.0, rho=0.2, long_fraction=0.6, short_max_len=64)
PHASES = (STABLE, ANNEAL, LONG)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Three languages; token ids unique across the corpus so a token identifies its document."""
    root = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    nxt = 0
    for lang, n in {"en": 300, "ko": 120, "ja": 60}.items():
        with ShardWriter(root / lang / "part-00000", lang, "h") as w:
            for _ in range(n):
                length = int(rng.integers(1, 200))
                w.add(np.arange(nxt, nxt + length), float(rng.random()))
                nxt += length
    return root


def take(loader, n):
    return [loader.next_batch() for _ in range(n)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=0, atol=0)


def test_batch_protocol(root):
    loader = PretrainLoader(root, STABLE, seed=1)
    assert loader.langs == ["en", "ja", "ko"]
    b = next(iter(loader))
    assert set(b) == {"input_ids", "labels", "doc_ids", "lang_ids"}
    for v in b.values():
        assert v.dtype == torch.int64 and v.shape == (4, 32)
    assert torch.equal(b["labels"], b["input_ids"])  # no padding in packed pretraining sequences
    assert b["doc_ids"].min() == 0 and b["lang_ids"].max() < 3
    assert loader.next_batch(batch_size=7)["input_ids"].shape == (7, 32)  # a batch-size ramp
    state = loader.state_dict()
    pad = loader.next_batch(batch_size=0)  # a rank with no sequence this micro-step: one target-less row
    assert pad["input_ids"].shape == (1, 32) and (pad["labels"] == -100).all() and (pad["doc_ids"] == -1).all()
    assert (pad["lang_ids"] == -1).all()
    assert loader.state_dict() == state  # reads nothing


@pytest.mark.parametrize(("world", "packing"), [(1, "fraction"), (2, "fraction"), (1, "literal"), (2, "literal")])
def test_resume_reproduces_the_uninterrupted_run(root, world, packing):
    """Phase switches at batches 3 and 6; interrupted before, at and after each switch, the resumed
    loader of every rank yields exactly the batches of the uninterrupted one."""
    STABLE, ANNEAL, LONG = (dataclasses.replace(p, packing=packing) for p in PHASES)

    def run(rank, stop=None):
        loader = PretrainLoader(root, STABLE, seed=11, rank=rank, world_size=world, block_size=16)
        batches, state = [], None
        for i in range(10):
            if i == stop:
                state = json.loads(json.dumps(loader.state_dict()))  # as it goes through a checkpoint
            if i == 3:
                loader.set_phase(ANNEAL)
            if i == 6:
                loader.set_phase(LONG)
            batches.append(loader.next_batch())
        return batches, state

    for rank in range(world):
        full, _ = run(rank)
        for stop in (1, 3, 4, 6, 8):
            _, state = run(rank, stop)
            resumed = PretrainLoader(root, STABLE, seed=11, rank=rank, world_size=world, block_size=16)
            resumed.load_state_dict(state)
            rest = []
            for i in range(stop, 10):
                if i == 3:
                    resumed.set_phase(ANNEAL)
                if i == 6:
                    resumed.set_phase(LONG)
                rest.append(resumed.next_batch())
            assert_same(rest, full[stop:])
        assert [b["input_ids"].shape[1] for b in full] == [32] * 3 + [48] * 3 + [128] * 4


def test_phase_is_part_of_the_state(root):
    a = PretrainLoader(root, STABLE, seed=2)
    a.next_batch()
    a.set_phase(ANNEAL)
    a.next_batch()
    b = PretrainLoader(root, STABLE, seed=2)
    b.load_state_dict(a.state_dict())
    assert b.phase == ANNEAL
    b.set_phase(PhaseData.from_dict(ANNEAL.to_dict()))  # a trainer re-applying its phase after resume
    assert_same(take(a, 3), take(b, 3))


def test_ranks_get_disjoint_documents(root):
    tokens = []
    for rank in range(3):
        loader = PretrainLoader(root, STABLE, seed=5, rank=rank, world_size=3)
        tokens.append(set(torch.cat([b["input_ids"].ravel() for b in take(loader, 10)]).tolist()))
    assert all(len(t) > 0 for t in tokens)
    assert tokens[0].isdisjoint(tokens[1]) and tokens[0].isdisjoint(tokens[2]) and tokens[1].isdisjoint(tokens[2])


def test_mismatched_state_is_an_error(root):
    state = PretrainLoader(root, STABLE, seed=3, rank=0, world_size=2).state_dict()
    with pytest.raises(ValueError, match="world_size"):
        PretrainLoader(root, STABLE, seed=3, rank=0, world_size=4).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        PretrainLoader(root, STABLE, seed=4, rank=0, world_size=2).load_state_dict(state)


def test_phase_from_dict():
    assert PhaseData.from_dict(ANNEAL.to_dict()) == ANNEAL
    with pytest.raises(KeyError, match="unknown key 'sequence_length'"):
        PhaseData.from_dict({"sequence_length": 128})
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        PhaseData.from_dict({"seq_len": "4096"})
    with pytest.raises(ValueError, match="rho must be a number in"):
        PhaseData(rho=1.5)


def test_bad_phase_names_the_problem(root):
    with pytest.raises(ValueError, match="unknown language 'de'"):
        PretrainLoader(root, PhaseData(alpha=0.0, beta={"de": 1.0}))
    with pytest.raises(ValueError, match="infeasible"):
        PretrainLoader(root, PhaseData(seq_len=64, alpha=0.0, beta={"en": 0.05, "ko": 0.95}, rho=1.0))
