import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from kollm.data.shards import LanguageCorpus, open_shards
from kollm.data.tokenize import PROGRESS, encode_texts, main, part_name, tokenize
from kollm.tokenizer.train import TokenizerConfig, tokenizer_hash, train

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "corpus"


@pytest.fixture(scope="module")
def texts() -> dict[str, list[str]]:
    if not DATA.is_dir():
        pytest.skip(f"dev data not found at {DATA}")
    par = DATA / "ko-en-parallel"
    reviews = [json.loads(line)["text"] for line in (DATA / "nsmc-reviews.jsonl").open(encoding="utf-8")][:600]
    return {"ko": [s.strip() for s in (par / "jhe-koen-dev.ko").open(encoding="utf-8")] + reviews,
            "en": [s.strip() for s in (par / "jhe-koen-dev.en").open(encoding="utf-8")]}


@pytest.fixture(scope="module")
def tok(texts) -> Tokenizer:
    return train(texts, TokenizerConfig(budgets={"en": 300, "ko": 300}))[0]


def write_inputs(d: Path, texts) -> tuple[list[tuple[str, str, float | None]], ...]:
    """Three files: JSONL (ko + en + malformed rows), Parquet (ko with quality), JSONL (en)."""
    d.mkdir(parents=True, exist_ok=True)
    a = [(t, "ko", None) for t in texts["ko"][:300]] + [(t, "en", None) for t in texts["en"][:200]]
    lines = [json.dumps({"text": t, "lang": lang}, ensure_ascii=False) for t, lang, _ in a]
    lines[10:10] = ["{not json", json.dumps({"text": "x", "lang": "../etc"}), json.dumps({"lang": "ko"})]
    (d / "a.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    b = [(t, "ko", i / 400) for i, t in enumerate(texts["ko"][300:700])]
    pq.write_table(pa.table({"text": [t for t, _, _ in b], "lang": ["ko"] * len(b), "quality": [q for *_, q in b]}),
                   d / "b.parquet")
    c = [(t, "en", None) for t in texts["en"][200:500]]
    (d / "c.jsonl").write_text("".join(json.dumps({"text": t, "lang": "en"}) + "\n" for t, _, _ in c))
    return a, b, c


def shard_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name in ("tokens.bin", "index.npy", "quality.npy")}


def test_encode_texts_is_tokenizers_encoding(tok, texts):
    sample = texts["ko"][:20] + texts["en"][:20] + [""]
    expected = [tok.encode(t, add_special_tokens=False).ids for t in sample]
    out = encode_texts(tok, sample)
    assert all(a.dtype == np.uint32 for a in out)
    assert [a.tolist() for a in out] == expected
    eos = tok.token_to_id("<|end_of_text|>")
    assert [a.tolist() for a in encode_texts(tok, sample, eos)] == [x + [eos] for x in expected]


def test_documents_round_trip_through_shards(tmp_path, tok, texts):
    a, b, c = write_inputs(tmp_path / "in", texts)
    summary = tokenize([str(tmp_path / "in")], tok, tmp_path / "shards", workers=1)
    assert summary["docs"] == {"ko": 700, "en": 500} and summary["tokenized"] == 3
    assert summary["malformed"] == {"bad_json": 1, "bad_lang": 1, "no_text": 1}
    shards = open_shards(tmp_path / "shards")
    assert sorted(shards) == ["en", "ko"] and [len(shards["en"]), len(shards["ko"])] == [2, 2]
    for lang, files in (("ko", (a, b)), ("en", (a, c))):
        expected = [t for f in files for t, lg, _ in f if lg == lang]
        # parts are sorted by name: a-..., b-... / a-..., c-...
        corpus = LanguageCorpus(shards[lang])
        assert len(corpus) == len(expected)
        docs = [corpus.doc(i) for i in range(len(corpus))]
        assert all(d[-1] == tok.token_to_id("<|end_of_text|>") for d in docs)
        assert all(d[0] == tok.token_to_id("<|begin_of_text|>") for d in docs)  # Llama 3: BOS text EOS
        assert [tok.decode(d[:-1].tolist()) for d in docs] == expected
        assert corpus.num_tokens == sum(len(tok.encode(t, add_special_tokens=False).ids) + 2 for t in expected)
        assert all(r.meta["tokenizer_hash"] == tokenizer_hash(tok) for r in shards[lang])
    part_b = next(r for r in shards["ko"] if r.dir.name == part_name(str((tmp_path / "in" / "b.parquet").resolve())))
    assert part_b.meta["quality"]["mean"] == pytest.approx(np.mean([q for *_, q in b]), abs=1e-6)
    assert isinstance(part_b.tokens, np.memmap)
    record = json.loads((tmp_path / "shards" / PROGRESS / f"{shards['ko'][0].dir.name}.json").read_text())
    assert record["malformed"] == {"bad_json": 1, "bad_lang": 1, "no_text": 1}
    assert record["malformed_examples"][0].endswith("a.jsonl:11: bad_json")


def test_resume_redoes_only_unfinished_files(tmp_path, tok, texts):
    write_inputs(tmp_path / "in", texts)
    clean = tmp_path / "clean"
    tokenize([str(tmp_path / "in")], tok, clean)
    root = tmp_path / "resumed"
    tokenize([str(tmp_path / "in")], tok, root)
    # simulate a run killed while writing b.parquet: no progress record, part without meta.json
    b_part = part_name(str((tmp_path / "in" / "b.parquet").resolve()))
    (root / PROGRESS / f"{b_part}.json").unlink()
    (root / "ko" / b_part / "meta.json").unlink()
    (root / "ko" / b_part / "tokens.bin").write_bytes(b"\x01\x02")
    # a finished file is not read again (changing it changes nothing)
    (tmp_path / "in" / "c.jsonl").write_text(json.dumps({"text": "changed", "lang": "en"}) + "\n")
    summary = tokenize([str(tmp_path / "in")], tok, root)
    assert (summary["skipped_done"], summary["tokenized"]) == (2, 1)
    assert summary["docs"] == {"ko": 700, "en": 500}
    assert shard_bytes(root) == shard_bytes(clean)


def test_parallel_workers_write_the_same_shards(tmp_path, tok, texts):
    write_inputs(tmp_path / "in", texts)
    tokenize([str(tmp_path / "in")], tok, tmp_path / "one", workers=1)
    summary = tokenize([str(tmp_path / "in")], tok, tmp_path / "two", workers=2)
    assert summary["tokenized"] == 3
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "two")


def test_other_tokenizer_in_same_root_is_an_error(tmp_path, tok, texts):
    write_inputs(tmp_path / "in", texts)
    tokenize([str(tmp_path / "in")], tok, tmp_path / "s")
    other = train(texts, TokenizerConfig(budgets={"en": 100}))[0]
    with pytest.raises(ValueError, match="was tokenized with tokenizer"):
        tokenize([str(tmp_path / "in")], other, tmp_path / "s")
    with pytest.raises(ValueError, match=re.escape("EOS '<|end_of_text|>' and BOS ids [") + ".*, not .*, None and"):
        tokenize([str(tmp_path / "in")], tok, tmp_path / "s", eos="")
    with pytest.raises(ValueError, match="EOS token '</s>' is not in the tokenizer"):
        tokenize([str(tmp_path / "in")], tok, tmp_path / "s2", eos="</s>")
    assert not (tmp_path / "s2").exists()


def test_main_prints_per_language_counts(tmp_path, tok, texts, capsys):
    write_inputs(tmp_path / "in", texts)
    tok.save(str(tmp_path / "tokenizer.json"))
    assert main([str(tmp_path / "in" / "*.jsonl"), "--tokenizer", str(tmp_path / "tokenizer.json"),
                 "--out", str(tmp_path / "s"), "--workers", "1", "--eos", ""]) == 0
    out = capsys.readouterr().out
    assert "en: 500 docs" in out and "ko: 300 docs" in out and "2 files tokenized, 0 already done" in out
    (ko,) = open_shards(tmp_path / "s")["ko"]
    assert tok.decode(ko.doc(0).tolist()) == texts["ko"][0]  # no EOS appended
    assert ko.meta["tokenizer_hash"] == tokenizer_hash(tok)  # same hash after a save/load round trip


def _chatml_tokenizer(d: Path, eos_token) -> Path:
    """A SmolLM2-like tokenizer directory: no Llama 3 tokens, its own EOS in tokenizer_config.json."""
    from tokenizers import models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.train_from_iterator(["hello world", "안녕하세요 세계"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    d.mkdir(parents=True)
    t.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos_token, "bos_token": None}))
    return d


@pytest.mark.parametrize("eos_token", ["<|endoftext|>", {"content": "<|im_end|>", "special": True}])
def test_default_eos_is_the_tokenizers_own(tmp_path, eos_token, capsys):
    # Was Llama 3's <|end_of_text|> whatever the tokenizer: "not in the tokenizer's vocabulary" for SmolLM2.
    d = _chatml_tokenizer(tmp_path / "tok", eos_token)
    name = eos_token if isinstance(eos_token, str) else eos_token["content"]
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "hello world", "lang": "en"}) + "\n")
    assert main([str(tmp_path / "in.jsonl"), "--tokenizer", str(d), "--out", str(tmp_path / "s"), "--workers", "1"]) == 0
    assert f"EOS after every document: {name!r}" in capsys.readouterr().out
    (en,) = open_shards(tmp_path / "s")["en"]
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    assert en.doc(0).tolist() == tok.encode("hello world", add_special_tokens=False).ids + [tok.token_to_id(name)]
    (d / "tokenizer_config.json").unlink()  # no config, no <|end_of_text|>: a clear error, not a guess
    with pytest.raises(ValueError, match="no eos_token in a tokenizer_config.json .* pass --eos"):
        tokenize([str(tmp_path / "in.jsonl")], d, tmp_path / "s3", workers=1)
