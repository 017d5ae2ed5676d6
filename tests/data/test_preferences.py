"""Preference rows: TRL's implicit prompt, mixed string / message rows, bad rows counted with
file:line; batches (chosen first, labels only on completions, keep-start cut); the data source's
epochs, rank shares and exact resume."""

import json

import pytest
import torch

from kollm.data.chat import RowErrors
from kollm.data.preferences import (
    PreferenceData,
    TokenizedPair,
    collate,
    extract_prompt,
    parse_pair,
    read_pairs,
)


def test_implicit_prompt_as_trl():
    # characters, the space before the split goes with the completion (trl.extract_prompt)
    assert extract_prompt("The sky is blue.", "The sky is green.") == ("The sky is", " blue.", " green.")
    u = {"role": "user", "content": "q"}
    a, b = {"role": "assistant", "content": "A"}, {"role": "assistant", "content": "B"}
    assert extract_prompt([u, a], [u, b]) == ([u], [a], [b])
    p = parse_pair({"chosen": [u, a], "rejected": [u, b], "id": 7})
    assert (p.prompt, p.chosen, p.rejected, p.id, p.conversational) == ([u], [a], [b], "7", True)


def test_mixed_rows_become_conversational():
    p = parse_pair({"prompt": "2+2?", "chosen": [{"role": "assistant", "content": "4"}], "rejected": "5"})
    assert p.prompt == [{"role": "user", "content": "2+2?"}]
    assert p.rejected == [{"role": "assistant", "content": "5"}]


def test_bad_rows_counted_with_file_and_line(tmp_path):
    rows = [
        {"prompt": "a", "chosen": "b", "rejected": "c"},
        {"prompt": "a", "chosen": "b"},
        {"prompt": "a", "chosen": 3, "rejected": "c"},
        {"chosen": "xyz", "rejected": "abc"},  # nothing in common: no prompt
        {"prompt": [{"role": "robot", "content": "x"}], "chosen": "b", "rejected": "c"},
        {"prompt": "a", "chosen": "  ", "rejected": "c"},
        {"prompt": "a", "chosen": [{"role": "user", "content": "b"}], "rejected": "c"},
        {"prompt": "a", "chosen": "same", "rejected": "same"},  # a constant loss: nothing to learn
        None,  # a `null` line
    ]
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    errors = RowErrors()
    pairs = read_pairs(str(f), errors)
    assert len(pairs) == 1 and (pairs[0].path, pairs[0].line) == (str(f), 1)
    summary = errors.summary()
    for reason, line in [("missing_rejected", 2), ("bad_chosen_type", 3), ("no_common_prompt", 4),
                         ("unknown_role", 5), ("empty_chosen", 6), ("chosen_not_assistant", 7),
                         ("chosen_equals_rejected", 8), ("not_an_object", 9)]:
        assert reason in summary and f"{f}:{line}" in summary, summary
    assert f"{f}:10 (bad_json" not in summary and "bad_json (e.g. " + f"{f}:10" in summary  # not JSON


def test_collate_chosen_first_labels_on_completions():
    pairs = [TokenizedPair([1, 2], [3, 4, 5], [6]), TokenizedPair([7], [8], [9, 10, 11, 12])]
    b = collate(pairs, max_length=5, pad_id=0, ref_logps=torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5], [7, 8, 0, 0, 0], [1, 2, 6, 0, 0], [7, 9, 10, 11, 12]]
    assert b["labels"].tolist() == [[-100, -100, 3, 4, 5], [-100, 8, -100, -100, -100],
                                    [-100, -100, 6, -100, -100], [-100, 9, 10, 11, 12]]  # last row cut at 5


def _pairs(n):
    return [TokenizedPair([1], [2 + i], [3 + i]) for i in range(n)]


def test_data_source_ranks_epochs_and_resume():
    n = 10
    ranks = [PreferenceData(_pairs(n), 8, 0, seed=3, rank=r, world=2) for r in range(2)]
    seen = [[int(x) for x in d.next_batch(5)["input_ids"][:5, 1] - 2] for d in ranks]
    assert sorted(seen[0] + seen[1]) == list(range(10))  # one epoch: disjoint, complete
    d = PreferenceData(_pairs(n), 8, 0, seed=3)
    d.next_batch(4)
    state = d.state_dict()
    want = [d.next_batch(4)["input_ids"].tolist() for _ in range(3)]  # crosses into epoch 1
    e = PreferenceData(_pairs(n), 8, 0, seed=3)
    e.load_state_dict(state)
    assert [e.next_batch(4)["input_ids"].tolist() for _ in range(3)] == want
    with pytest.raises(ValueError, match="same data"):
        PreferenceData(_pairs(n + 1), 8, 0).load_state_dict(state)
