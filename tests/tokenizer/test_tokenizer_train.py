import json

import pytest
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.trainers import BpeTrainer

from kollm.tokenizer.train import (
    SPECIAL_TOKENS,
    TokenizerConfig,
    add_special_tokens,
    byte_level_base,
    bytes_to_unicode,
    read_texts,
    save,
    train,
)


def merges_of(tok: Tokenizer) -> list[tuple[str, str]]:
    return [tuple(m) for m in json.loads(tok.to_str())["model"]["merges"]]


def n_tokens(tok: Tokenizer, texts: list[str]) -> int:
    return sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))


def test_byte_map_is_the_byte_level_alphabet():
    m = bytes_to_unicode()
    assert sorted(m) == list(range(256)) and len(set(m.values())) == 256
    assert set(m.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert m[ord("A")] == "A" and m[ord(" ")] == "Ġ" and m[ord("\n")] == "Ċ"


def test_byte_base_encodes_utf8_bytes_as_ids():
    tok = byte_level_base()
    for text in ["한국어 텍스트", "tab\there\r\n", "emoji 🙂 and \x00 nul", "ÿ¡¬®"]:
        assert tok.encode(text).ids == list(text.encode("utf-8"))
        assert tok.decode(tok.encode(text).ids) == text


def test_single_language_equals_plain_bpe(corpus):
    """Growing from bytes with one language is ordinary BPE: same merges as tokenizers' own
    trainer (order may differ only among equal-count ties) and the same token count."""
    ko = corpus["train"]["ko"]
    ours, summary, _ = train({"ko": ko}, TokenizerConfig(budgets={"ko": 600}))
    ref = byte_level_base()
    ref.train_from_iterator(ko, BpeTrainer(vocab_size=256 + 600, min_frequency=2, show_progress=False,
                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    assert set(merges_of(ours)) == set(merges_of(ref))
    assert n_tokens(ours, ko) == n_tokens(ref, ko)
    assert summary["languages"][0]["added"] == 600


def test_layout_budgets_and_specials(bilingual):
    tok, summary, _ = bilingual
    en, ko = summary["languages"]
    assert (en["lang"], en["added"], en["ids"]) == ("en", 1500, [256, 1756])
    assert (ko["lang"], ko["added"], ko["ids"]) == ("ko", 1200, [1756, 2956])
    assert tok.get_vocab_size() == 2956 + len(SPECIAL_TOKENS)
    assert [tok.token_to_id(s) for s in SPECIAL_TOKENS] == list(range(2956, 2956 + len(SPECIAL_TOKENS)))
    # every merge is usable by HF's BPE: both parts and the result are in the vocabulary
    vocab = tok.get_vocab()
    assert all(a in vocab and b in vocab and a + b in vocab for a, b in merges_of(tok))
    assert tok.encode("안녕").ids[0] == tok.token_to_id("<|begin_of_text|>")


def test_nested_budgets_are_prefixes(bilingual):
    tok, summary, nested = bilingual
    assert sorted(nested) == ["ko-100", "ko-400"]
    full_vocab, full_merges = tok.get_vocab(with_added_tokens=False), merges_of(tok)
    korean_in_order = sorted((i, t) for t, i in full_vocab.items() if i >= 1756)
    prev = set()
    for k in (100, 400):
        sub = nested[f"ko-{k}"]
        v = sub.get_vocab(with_added_tokens=False)
        assert len(v) == 1756 + k
        assert all(full_vocab[t] == i for t, i in v.items())  # same tokens, same ids
        assert {t for i, t in korean_in_order[:k]} == {t for t, i in v.items() if i >= 1756}
        m = merges_of(sub)
        assert m == full_merges[:len(m)]  # exactly the first merges learned
        assert prev < set(v)
        prev = set(v)
        assert sub.token_to_id("<|eot_id|>") == 1756 + k + SPECIAL_TOKENS.index("<|eot_id|>")


def test_korean_budget_is_what_encodes_korean(corpus, bilingual):
    """On held-out Korean: the bilingual tokenizer uses its Korean tokens, is as efficient on Korean
    as a Korean-only BPE with the same Korean budget on top of the same English, and tokens per
    character fall monotonically with the nested budgets."""
    tok, summary, nested = bilingual
    ko = corpus["heldout"]["ko"]
    lo, hi = summary["languages"][1]["ids"]
    en_only, _, _ = train(corpus["train"], TokenizerConfig(budgets={"en": 1500 + 1200}))
    tokenizers = (en_only, nested["ko-100"], nested["ko-400"], tok)
    ids = [[i for e in t.encode_batch(ko, add_special_tokens=False) for i in e.ids] for t in tokenizers]
    counts = [len(x) for x in ids]
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == 4
    assert counts[-1] < 0.75 * counts[0]
    # raw non-ASCII bytes (ids 128..255) are what Korean falls back to without Korean tokens
    byte_share = [sum(128 <= i < 256 for i in x) / len(x) for x in ids]
    assert byte_share == sorted(byte_share, reverse=True) and byte_share[-1] < 0.15 < 0.4 < byte_share[1]
    assert sum(lo <= i < hi for i in ids[-1]) / len(ids[-1]) > 0.5
    # English barely changes when Korean is added after it
    en = corpus["heldout"]["en"]
    en_tok, _, _ = train(corpus["train"], TokenizerConfig(budgets={"en": 1500}))
    assert abs(n_tokens(tok, en) - n_tokens(en_tok, en)) <= 0.01 * n_tokens(en_tok, en)


def test_transformers_loads_with_same_ids_and_chat_template(tmp_path, corpus, bilingual):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok, summary, _ = bilingual
    save(tok, tmp_path / "tok", summary)
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    fast = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tok" / "tokenizer.json"))
    texts = corpus["heldout"]["ko"][:50] + corpus["heldout"]["en"][:50] + ["  공백\n\n줄바꿈 🙂 123456"]
    for text in texts:
        ids = tok.encode(text).ids
        assert hf(text)["input_ids"] == ids
        assert fast(text, add_special_tokens=False)["input_ids"] == ids[1:]
        assert hf.decode(ids, skip_special_tokens=True) == text
    assert (hf.bos_token, hf.eos_token, hf.pad_token) == ("<|begin_of_text|>", "<|end_of_text|>", "<|pad|>")
    assert hf.pad_token_id == tok.token_to_id("<|pad|>")

    messages = [{"role": "system", "content": "너는 도우미야."}, {"role": "user", "content": " 안녕? \n"}]
    rendered = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n너는 도우미야.<|eot_id|>"
                        "<|start_header_id|>user<|end_header_id|>\n\n안녕?<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    ids = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert ids == tok.encode(rendered, add_special_tokens=False).ids
    assert ids.count(tok.token_to_id("<|begin_of_text|>")) == 1 and ids.count(tok.token_to_id("<|eot_id|>")) == 2
    meta = json.loads((tmp_path / "tok" / "kollm_tokenizer.json").read_text())
    assert meta["languages"] == summary["languages"] and len(meta["tokenizer_hash"]) == 16


def test_vocab_size_pads_with_reserved_specials():
    tok = add_special_tokens(byte_level_base(), vocab_size=300)
    assert tok.get_vocab_size() == 300
    assert tok.id_to_token(299) == f"<|reserved_special_token_{300 - 256 - len(SPECIAL_TOKENS) - 1}|>"
    with pytest.raises(ValueError, match="vocab_size 260"):
        add_special_tokens(byte_level_base(), vocab_size=260)


@pytest.mark.parametrize("kwargs, match", [
    ({"budgets": {}}, "no language budgets"),
    ({"budgets": {"en": 0}}, "budget for 'en'"),
    ({"budgets": {"ko": 10, "en": 10}, "series": {"ko": [5]}}, "must be the last"),
    ({"budgets": {"en": 10, "ko": 10}, "series": {"ko": [10]}}, r"must lie in \(0, 10\)"),
])
def test_config_errors_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenizerConfig(**kwargs)


def test_missing_language_text_is_an_error():
    with pytest.raises(ValueError, match=r"no training text for language\(s\) \['ko'\]"):
        train({"en": ["hello world"]}, TokenizerConfig(budgets={"en": 5, "ko": 5}))


def test_read_texts_groups_by_lang_and_counts_bad_rows(tmp_path, capsys):
    (tmp_path / "docs.jsonl").write_text(
        '{"text": "안녕", "lang": "ko"}\n{"text": "hi", "lang": "en"}\n{bad\n{"text": "no lang"}\n{"lang": "ko"}\n')
    (tmp_path / "plain.txt").write_text("하나\n\n둘\n")
    texts, bad = read_texts([str(tmp_path / "docs.jsonl"), f"ko={tmp_path / 'plain.txt'}"])
    assert texts == {"ko": ["안녕", "하나", "둘"], "en": ["hi"]}
    assert bad == {"bad_json": 1, "no_lang": 1, "no_text": 1}
    assert f"{tmp_path / 'docs.jsonl'}:3: malformed row (bad_json)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="plain-text input needs a language"):
        read_texts([str(tmp_path / "plain.txt")])
    with pytest.raises(FileNotFoundError, match="no files match"):
        read_texts([f"ko={tmp_path / 'nope*.txt'}"])
