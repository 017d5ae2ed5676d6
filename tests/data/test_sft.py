"""kollm.data.sft: the trained-token mask (hand count and TRL's assistant_only_loss), packing
isolation under the document mask with restarted positions, truncation and bad-row counts,
min_score, best-fit-decreasing packing, deterministic epochs, exact resume and rank slicing."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))

from sft_fixtures import make_model_dir, math_rows, write_jsonl  # noqa: E402

from kollm.data import chat  # noqa: E402
from kollm.data.loader import PhaseData  # noqa: E402
from kollm.data.sft import (  # noqa: E402
    IGNORE,
    SFTData,
    SFTValidation,
    best_fit_decreasing,
    collate,
    load_conversations,
)

MULTI_TURN = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Tom has 3 apples and buys 4 more. How many?"},
    {"role": "assistant", "content": "3 + 4 = 7. The answer is 7."},
    {"role": "user", "content": "민수는 사과를 하나 먹었습니다. 몇 개 남았습니까?"},
    {"role": "assistant", "content": "7 - 1 = 6. 답은 6개입니다."},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("sft-data") / "model")


@pytest.fixture(scope="module")
def tok(model_dir):
    return chat.load_tokenizer(model_dir)


def phase(seq_len=128, batch_size=4):
    return PhaseData(seq_len=seq_len, batch_size=batch_size)


def test_multi_turn_mask_is_exactly_the_responses_and_their_end_of_turn(tok, tmp_path):
    path = write_jsonl(tmp_path / "one.jsonl", [{"messages": MULTI_TURN}])
    data = SFTData(str(path), tok, packing=False)
    data.set_phase(phase(256, 1))
    batch = data.next_batch()
    labels = batch["labels"][0]
    trained = labels[labels != IGNORE].tolist()
    # Hand count: each assistant content (trimmed) as the tokenizer encodes it alone, then <|eot_id|>.
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    expected = []
    for m in MULTI_TURN:
        if m["role"] == "assistant":
            expected += tok(m["content"].strip(), add_special_tokens=False)["input_ids"] + [eot]
    assert trained == expected
    assert tok.decode(trained) == "3 + 4 = 7. The answer is 7.<|eot_id|>7 - 1 = 6. 답은 6개입니다.<|eot_id|>"
    # BOS exactly once, first; the input is what the tokenizer renders at inference.
    ids = batch["input_ids"][0][batch["doc_ids"][0] >= 0].tolist()
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    assert ids == tok.apply_chat_template(MULTI_TURN, tokenize=True, return_dict=True)["input_ids"]


def test_mask_equals_trl_assistant_only_loss(model_dir, tok, tmp_path):
    trl = pytest.importorskip("trl", reason="TRL is in the bench extra (pip install -e .[bench])")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    convs = [MULTI_TURN, [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]]
    assert "{% generation %}" in tok.chat_template  # kollm's template: transformers computes the mask itself
    trainer = trl.SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir),
        args=trl.SFTConfig(output_dir=str(tmp_path / "trl"), assistant_only_loss=True, max_length=None,
                           report_to=[], packing=False, bf16=False, use_cpu=True),
        train_dataset=Dataset.from_list([{"messages": c} for c in convs]),
        processing_class=tok,
    )
    for i, conv in enumerate(convs):
        row = trainer.train_dataset[i]
        ids, trained = chat.render(tok, conv)
        assert ids == row["input_ids"]
        # TRL folds assistant_masks into labels (-100 off the assistant tokens): what it trains on
        assert [i if t else IGNORE for i, t in zip(ids, trained)] == row["labels"]
    assert sum(x != IGNORE for x in trainer.train_dataset[1]["labels"]) == 2  # "4" and <|eot_id|>


def test_packed_conversations_do_not_see_each_other(model_dir, tok, tmp_path):
    from kollm.model.hf import load_hf

    rows = math_rows(6)
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    convs = load_conversations([str(path)], tok)
    model = load_hf(model_dir).eval()
    packed = collate(convs, [[0, 1, 2], [3, 4, 5]], 512, packing=True, pad_id=tok.pad_token_id)
    other = collate(convs, [[4, 1, 5], [3, 0, 2]], 512, packing=True, pad_id=tok.pad_token_id)
    with torch.no_grad():
        out = model(packed["input_ids"], doc_ids=packed["doc_ids"], mask_policy="document", restart_positions=True)
        out2 = model(other["input_ids"], doc_ids=other["doc_ids"], mask_policy="document", restart_positions=True)
        for (row, doc), (row2, doc2) in (((0, 1), (0, 1)), ((1, 1), (0, 0)), ((0, 2), (1, 2))):
            a = out.logits[row][packed["doc_ids"][row] == doc]
            b = out2.logits[row2][other["doc_ids"][row2] == doc2]
            n = a.shape[0]
            alone = model(packed["input_ids"][row][packed["doc_ids"][row] == doc][None]).logits[0]
            assert n > 10 and b.shape[0] == n
            torch.testing.assert_close(a, alone, rtol=1e-4, atol=1e-4)  # packed == on its own
            torch.testing.assert_close(b, alone, rtol=1e-4, atol=1e-4)  # whatever shares the row
        # the mask is what isolates them: under the causal mask the second conversation sees the first
        leaky = model(packed["input_ids"], doc_ids=packed["doc_ids"], mask_policy="causal").logits
        assert not torch.allclose(leaky[0][packed["doc_ids"][0] == 1], out.logits[0][packed["doc_ids"][0] == 1],
                                  atol=1e-3)


def test_bad_rows_counted_by_reason_with_file_and_line(tok, tmp_path):
    bad = ['{"messages": [{"role": "user", "content": "hi"}]}',                     # line 3
           '{"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}',
           '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}',
           '{not json', '[1, 2]']
    path = write_jsonl(tmp_path / "bad.jsonl", math_rows(2), bad)
    convs = load_conversations([str(path)], tok)
    assert len(convs) == 2
    summary = convs.errors.summary()
    for reason, line in (("no_assistant_turn", 3), ("unknown_role", 4), ("empty_content", 5)):
        assert reason in summary and f"bad.jsonl:{line}" in summary
    assert "bad.jsonl:6" in summary and "bad.jsonl:7" in summary
    assert convs.sources == [f"{path}:1", f"{path}:2"]


def test_min_score_keeps_judged_rows_at_or_above(tok, tmp_path):
    rows = [dict(r, score=s) for r, s in zip(math_rows(6), [5, 3, 4, 0, 4, 2])] + [math_rows(1)[0]]
    convs = load_conversations([str(write_jsonl(tmp_path / "judged.jsonl", rows))], tok, min_score=4)
    assert [s.rsplit(":", 1)[1] for s in convs.sources] == ["1", "3", "5"]
    assert convs.filtered == 3
    assert "no_score" in convs.errors.summary() and "judged.jsonl:7" in convs.errors.summary()


def test_truncation_is_counted_and_responses_cut_off_entirely_are_dropped(tok, tmp_path):
    long_prompt = " ".join(["apples"] * 200)
    rows = [{"prompt": "Hi", "completion": " ".join(["seven"] * 200)},  # long answer: truncated, kept
            {"prompt": long_prompt, "completion": "7"},                 # answer beyond the cut: dropped
            {"prompt": "2+2?", "completion": "4"}]
    data = SFTData(str(write_jsonl(tmp_path / "long.jsonl", rows)), tok, packing=False)
    data.set_phase(phase(64, 3))
    s = data.summary()
    assert (s["conversations"], s["truncated"], s["truncated_no_response"]) == (3, 2, 1)
    batch = data.next_batch(2)
    assert batch["input_ids"].shape == (2, 64)  # padded mode: the longest row (64) of the batch
    kept = sorted(int((d >= 0).sum()) for d in batch["doc_ids"])
    short = len(chat.render(tok, chat.to_messages(rows[2]))[0])
    assert kept == [short, 64]  # the short one whole, the long answer cut at 64 tokens


def test_best_fit_decreasing_known_packing():
    # capacity 10: 7→bin0, 6→bin1, 5→bin2, 4 fits bin1 (free 4, tightest), 3 fits bin0, 2 fits bin2
    assert best_fit_decreasing(np.array([5, 7, 3, 6, 2, 4]), 10) == [[1, 2], [3, 5], [0, 4]]


def test_epochs_are_deterministic_and_resume_exactly(tok, tmp_path):
    path = str(write_jsonl(tmp_path / "rows.jsonl", math_rows(30)))
    a = SFTData(path, tok, seed=3)
    a.set_phase(phase())
    first = [a.next_batch() for _ in range(3)]
    state = json.loads(json.dumps(a.state_dict()))  # JSON-serialisable, as the checkpoint stores it
    rest = [a.next_batch() for _ in range(12)]  # crosses into the next epoch
    assert a.epoch >= 1
    b = SFTData(path, tok, seed=3)
    b.set_phase(phase())
    for x, y in zip(first, [b.next_batch() for _ in range(3)]):
        assert all(torch.equal(x[k], y[k]) for k in x)
    c = SFTData(path, tok, seed=3)
    c.set_phase(phase())
    c.load_state_dict(state)
    for x, y in zip(rest, [c.next_batch() for _ in range(12)]):
        assert all(torch.equal(x[k], y[k]) for k in x)
    # every conversation exactly once per epoch; another seed, another order
    rows = a.epoch_rows(0)
    assert sorted(i for r in rows for i in r) == list(range(30))
    d = SFTData(path, tok, seed=4)
    d.set_phase(phase())
    assert d.epoch_rows(0) != a.epoch_rows(0)


def test_ranks_take_disjoint_slices_of_the_same_global_batch(tok, tmp_path):
    path = str(write_jsonl(tmp_path / "rows.jsonl", math_rows(30)))
    one = SFTData(path, tok, seed=1)
    one.set_phase(phase())
    ranks = [SFTData(path, tok, seed=1, rank=r, world_size=2, convs=one.convs) for r in range(2)]
    for r in ranks:
        r.set_phase(phase())
    for _ in range(5):
        full = one.next_batch(4)
        parts = [r.next_batch(2) for r in ranks]
        for k in full:
            assert torch.equal(torch.cat([p[k] for p in parts]), full[k])


def test_validation_batches_cover_every_conversation_once_on_every_call(tok, tmp_path):
    path = str(write_jsonl(tmp_path / "val.jsonl", math_rows(9)))
    val = SFTValidation(path, tok, seq_len=256, batch_size=2)
    batches = list(val.batches())
    trained = sum(int((b["labels"] != IGNORE).sum()) for b in batches)
    assert trained == int(val.convs.trained.sum())
    again = list(val.batches())
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(batches, again))
    # two ranks: same number of batches each, together the same conversations
    parts = [list(SFTValidation(path, tok, 256, 2, rank=r, world_size=2, convs=val.convs).batches()) for r in (0, 1)]
    assert len(parts[0]) == len(parts[1])
    assert sum(int((b["labels"] != IGNORE).sum()) for p in parts for b in p) == trained
