"""Malformed inputs to the data stages: a row nested 100,000 levels deep is one bad row for
curation and tokenization (both read through `iter_rows`), not a RecursionError; a corrupt
tokenizer.json is an error naming the file."""

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from kollm.data.documents import iter_rows
from kollm.data.tokenize import tokenize

DEEP = b"{\"text\": " + b"[" * 100_000 + b"]" * 100_000 + b"}"


def _tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["hello world", "안녕하세요 세계"],
                            trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def test_deeply_nested_row_is_one_bad_row(tmp_path):
    f = tmp_path / "in.jsonl"
    f.write_bytes(json.dumps({"text": "hello world", "lang": "en"}).encode() + b"\n" + DEEP + b"\n"
                  + b"[" * 100_000 + b"\n" + json.dumps({"text": "안녕하세요", "lang": "ko"}).encode() + b"\n")
    rows = list(iter_rows(str(f)))
    assert [(line, reason) for line, _, reason in rows] == [(1, None), (2, "nested_too_deep"),
                                                              (3, "nested_too_deep"), (4, None)]
    summary = tokenize([str(f)], _tokenizer(), tmp_path / "shards", workers=1, eos="")
    assert summary["malformed"] == {"nested_too_deep": 2} and summary["docs"] == {"en": 1, "ko": 1}


def test_corrupt_tokenizer_json_is_named(tmp_path):
    bad = tmp_path / "tok" / "tokenizer.json"
    bad.parent.mkdir()
    bad.write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "x", "lang": "en"}) + "\n")
    with pytest.raises(ValueError, match=rf"{bad}: not a valid tokenizer.json"):
        tokenize([str(tmp_path / "in.jsonl")], bad.parent, tmp_path / "shards")


def test_training_shards_and_the_exported_tokenizer_agree_on_bos(tmp_path):
    """Llama 3's convention on both sides: a training document is BOS + text + EOS, and
    AutoTokenizer on the exported model encodes a prompt as BOS + text, the same ids."""
    from transformers import AutoTokenizer

    from kollm.data.shards import LanguageCorpus, open_shards
    from kollm.model.hf import _write_tokenizer
    from kollm.tokenizer.train import TokenizerConfig, save, train

    ko = ["서울은 대한민국의 수도이다.", "한국어와 영어를 함께 배우는 모델입니다.", "오늘 날씨가 맑습니다."] * 30
    en = ["The quick brown fox jumps over the lazy dog.", "Language models predict the next token."] * 30
    tok = train({"en": en, "ko": ko}, TokenizerConfig(budgets={"en": 60, "ko": 60}))[0]
    save(tok, tmp_path / "tok")
    docs = [("서울은 대한민국의 수도이다. 날씨가 맑습니다.", "ko"), ("The lazy fox predicts the next token.", "en")]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t, "lang": lg}, ensure_ascii=False) + "\n"
                                               for t, lg in docs))
    tokenize([str(tmp_path / "in.jsonl")], tmp_path / "tok", tmp_path / "shards")
    export = tmp_path / "export"
    export.mkdir()
    _write_tokenizer(str(tmp_path / "tok"), export)  # what `kollm export` ships
    hf = AutoTokenizer.from_pretrained(export)
    shards = open_shards(tmp_path / "shards")
    for text, lang in docs:
        trained = LanguageCorpus(shards[lang]).doc(0).tolist()
        assert trained[0] == tok.token_to_id("<|begin_of_text|>") and trained[-1] == tok.token_to_id("<|end_of_text|>")
        assert hf(text)["input_ids"] == trained[:-1]
