import json

import pytest
import torch
from tokenizers import Tokenizer

from kollm.model import build_model, get_preset
from kollm.tokenizer.extend import extend_tokenizer, resize_for_extended_tokenizer
from kollm.tokenizer.train import TokenizerConfig, add_special_tokens, train


@pytest.fixture(scope="module")
def llama_like(corpus) -> Tokenizer:
    """An English-only tokenizer laid out like Llama 3's: BPE ids, then a block of special tokens
    (reserved ones included), with `ignore_merges` on as in Llama 3's tokenizer.json."""
    tok, _, _ = train({"en": corpus["train"]["en"]}, TokenizerConfig(budgets={"en": 1000}))
    d = json.loads(tok.to_str())
    d["model"]["ignore_merges"] = True
    tok = Tokenizer.from_str(json.dumps(d))
    assert tok.get_vocab_size() == 1256 + 6
    return add_special_tokens(Tokenizer.from_str(tok.to_str()), vocab_size=1300)


@pytest.fixture(scope="module")
def extended(corpus, llama_like):
    return extend_tokenizer(llama_like, corpus["train"]["ko"], 500)


def n_tokens(tok, texts):
    return sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))


def test_extend_keeps_every_id_and_appends_after_specials(llama_like, extended):
    tok, added = extended
    old, new = llama_like.get_vocab(), tok.get_vocab()
    assert all(new[t] == i for t, i in old.items())
    assert len(added) == 500 and sorted(new[t] for t in added) == list(range(1300, 1800))
    assert tok.get_vocab_size() == 1800
    d_old, d_new = json.loads(llama_like.to_str()), json.loads(tok.to_str())
    assert d_new["model"]["merges"][: len(d_old["model"]["merges"])] == d_old["model"]["merges"]
    assert d_new["model"]["ignore_merges"] is True and d_new["post_processor"] == d_old["post_processor"]
    assert d_new["added_tokens"] == d_old["added_tokens"]


def test_extend_lowers_korean_tokens_and_keeps_english(corpus, llama_like, extended):
    tok, added = extended
    ko, en = corpus["heldout"]["ko"], corpus["heldout"]["en"]
    assert n_tokens(tok, ko) < 0.7 * n_tokens(llama_like, ko)
    assert abs(n_tokens(tok, en) - n_tokens(llama_like, en)) <= 0.01 * n_tokens(llama_like, en)
    used = {i for e in tok.encode_batch(ko, add_special_tokens=False) for i in e.ids}
    assert len(used & set(range(1300, 1800))) > 400  # the new tokens are reachable by encoding
    for text in ko[:100]:
        assert tok.decode(tok.encode(text).ids, skip_special_tokens=True) == text


def test_extend_rejects_nonpositive_count(llama_like):
    with pytest.raises(ValueError, match="must be positive"):
        extend_tokenizer(llama_like, ["안녕"], 0)


@pytest.mark.parametrize("tied", [False, True])
def test_resize_initialises_new_rows_as_mean_of_replaced_tokens(llama_like, extended, tied):
    tok, added = extended
    torch.manual_seed(0)
    model = build_model(get_preset("tiny", vocab_size=1300, tie_embeddings=tied))
    old_emb = model.model.embed_tokens.weight.detach().clone()
    old_head = model.lm_head.weight.detach().clone()
    new_ids = resize_for_extended_tokenizer(model, llama_like, tok)
    assert new_ids == list(range(1300, 1800))
    emb, head = model.model.embed_tokens.weight, model.lm_head.weight
    assert emb.shape == head.shape == (1800, 64) and model.config.vocab_size == 1800
    assert (head is emb) == tied
    assert torch.equal(emb[:1300], old_emb) and torch.equal(head[:1300], old_head)
    for token in added[:50]:
        parts = [t.id for t in llama_like.model.tokenize(token)]
        assert len(parts) > 1 and max(parts) < 1300
        i = tok.token_to_id(token)
        torch.testing.assert_close(emb[i], old_emb[parts].mean(0))
        torch.testing.assert_close(head[i], old_head[parts].mean(0))
    ids = torch.tensor([tok.encode("한국어 문장입니다", add_special_tokens=False).ids])
    assert ids.max() >= 1300
    assert model(ids).logits.shape == (1, ids.shape[1], 1800)
    loss = model(ids).logits.logsumexp(-1).sum()
    loss.backward()
    assert emb.grad is not None and emb.grad[1300:].abs().sum() > 0


def test_resize_rejects_a_tokenizer_that_moves_ids(corpus, llama_like):
    other, _, _ = train({"ko": corpus["train"]["ko"]}, TokenizerConfig(budgets={"ko": 1100}))
    model = build_model(get_preset("tiny", vocab_size=1300))
    with pytest.raises(ValueError, match="not an extension"):
        resize_for_extended_tokenizer(model, llama_like, other)


def test_extended_tokenizer_loads_in_transformers_with_same_ids(tmp_path, corpus, llama_like, extended):
    from transformers import AutoTokenizer

    from kollm.tokenizer.train import save

    tok, _ = extended
    save(tok, tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    for text in corpus["heldout"]["ko"][:30] + ["<|begin_of_text|>안녕<|eot_id|>"]:
        assert hf(text)["input_ids"] == tok.encode(text).ids
    assert hf.convert_tokens_to_ids("<|eot_id|>") == llama_like.token_to_id("<|eot_id|>") == 1260


def test_extend_learns_on_normalized_text(corpus):
    """A base with an NFC normalizer sees decomposed (NFD) Korean as syllables at encode time, so
    the new tokens must be learned on normalized text too or they would never be used."""
    import unicodedata

    from tokenizers import normalizers

    from kollm.tokenizer.train import byte_level_base

    base = byte_level_base()
    base.normalizer = normalizers.NFC()
    nfd = [unicodedata.normalize("NFD", t) for t in corpus["train"]["ko"]]
    tok, added = extend_tokenizer(base, nfd, 300)
    assert all(not any("\u1100" <= ch <= "\u11ff" for ch in tok.decode([tok.token_to_id(t)])) for t in added)
    held = [unicodedata.normalize("NFD", t) for t in corpus["heldout"]["ko"]]
    assert n_tokens(tok, held) < 0.6 * n_tokens(base, held)


def test_word_counts_reach_the_trainer_exactly():
    from collections import Counter

    from kollm.tokenizer.extend import _repeat, continue_bpe
    from kollm.tokenizer.train import byte_level_base

    assert list(_repeat(Counter({"x": 5, "y": 1}), chunk=2)) == ["x x ", "x x ", "x ", "y "]
    # merges follow the counts; below min_frequency nothing is learned
    new, merges = continue_bpe(byte_level_base(), Counter({"cd": 5, "abc": 9, "xy": 1}), 10)
    assert new == ["ab", "abc", "cd"] and merges == [("a", "b"), ("ab", "c"), ("c", "d")]
