"""Quality classifier: learns a real distinction (news prose vs. short reviews/chat) from judged
samples, reports held-out P/R/F1, saves without pickle, loads to identical predictions; the
encoder path mean-pools so that padding does not change a text's features."""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from kollm.cli import main as kollm_main
from kollm.data.classifier import FeatureConfig, Featurizer, QualityClassifier, load_judged, train_classifier

DATA = Path("/work/shared/data/corpus")
needs_data = pytest.mark.skipif(not (DATA / "nsmc-reviews.jsonl").is_file(), reason="shared dev data absent")


def _judged(n: int = 400) -> list[dict]:
    rng = random.Random(0)
    par = DATA / "ko-en-parallel"
    news = [t for lang in ("ko", "en") for t in (par / f"korean-english-park.test.{lang}").read_text().splitlines()
            if len(t) > 40][: n // 2]
    reviews = [json.loads(x)["text"] for x in (DATA / "nsmc-reviews.jsonl").read_text().splitlines()[: n // 4]]
    chat = (par / "jhe-koen-dev.en").read_text().splitlines()[: n // 4]
    rows = [{"text": t, "score": rng.choice([3, 4, 5])} for t in news]
    rows += [{"text": t, "score": rng.choice([0, 1, 2])} for t in reviews + chat]
    rng.shuffle(rows)
    return rows


@needs_data
def test_hashed_classifier_learns_and_round_trips(tmp_path):
    rows = _judged()
    clf, metrics = train_classifier([r["text"] for r in rows], [r["score"] for r in rows], FeatureConfig())
    held = metrics["held_out"]
    assert held["n"] == 80 and 0 < held["positives"] < 80
    assert held["f1"] >= 0.85 and held["precision"] >= 0.8 and held["recall"] >= 0.8
    clf.save(str(tmp_path / "clf"))
    assert sorted(p.name for p in (tmp_path / "clf").iterdir()) == ["classifier.json", "model.safetensors"]
    loaded = QualityClassifier.load(str(tmp_path / "clf"))
    texts = [r["text"] for r in rows[:50]]
    np.testing.assert_allclose(loaded.predict_proba(texts), clf.predict_proba(texts), rtol=1e-6)
    assert json.loads((tmp_path / "clf" / "classifier.json").read_text())["metrics"]["held_out"] == held


def test_needs_both_labels():
    with pytest.raises(ValueError, match="both labels"):
        train_classifier(["a", "b", "c"], [4, 5, 3], FeatureConfig(n_features=2**10))


def test_load_judged_skips_bad_rows(tmp_path):
    p = tmp_path / "judged.jsonl"
    p.write_bytes(b'{"text": "a", "score": 3}\n{"text": "b", "score": 9}\n{"text": "c"}\nnot json\n'
                  b'{"text": "d", "score": true}\n{"text": "e", "score": 0}\nnull\n{"text": "\xff", "score": 1}\n'
                  b'{"text": 5, "score": 1}\n')  # null and a non-UTF-8 byte: were a crash
    texts, scores, errors = load_judged(str(p))
    assert (texts, scores) == (["a", "e"], [3, 0])
    assert errors.counts == {"bad_score": 3, "bad_json": 1, "not_an_object": 1, "invalid_utf8": 1, "no_text": 1}
    assert errors.where["invalid_utf8"] == [f"{p}:8"]


@needs_data
def test_cli_train_then_score_corpus(tmp_path):
    judged = tmp_path / "judged.jsonl"
    judged.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in _judged()) + "\n")
    assert kollm_main(["data", "classifier", "train", "--judged", str(judged), "--output", str(tmp_path / "m")]) == 0
    corpus = tmp_path / "corpus.jsonl"
    news = (DATA / "ko-en-parallel" / "korean-english-park.dev.ko").read_text().splitlines()[:30]
    reviews = [json.loads(x)["text"] for x in (DATA / "nsmc-reviews.jsonl").read_text().splitlines()[-30:]]
    corpus.write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in news + reviews) + "\n")
    out = tmp_path / "scored.parquet"
    assert kollm_main(["data", "classifier", "score", "--model", str(tmp_path / "m"), "--input", str(corpus),
                       "--output", str(out), "--batch-size", "16"]) == 0
    import pyarrow.parquet as pq

    q = pq.read_table(out).column("quality").to_pylist()
    assert len(q) == 60
    assert np.mean(q[:30]) > np.mean(q[30:]) + 0.15  # unseen news scores above unseen reviews


def _tiny_encoder(folder: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,!?가나다라마바사아자차카타파하한국어문장입니다"))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + chars + ["##" + c for c in chars]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    fast.save_pretrained(folder)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    return folder


def test_encoder_features_mean_pool_over_real_tokens(tmp_path):
    enc = _tiny_encoder(tmp_path / "enc")
    featurize = Featurizer(FeatureConfig(kind="encoder", encoder=str(enc), batch_size=8))
    short, long = "한국어 문장", "this is a much longer english sentence with many more tokens in it."
    alone = featurize([short])
    batched = featurize([short, long])  # `short` is padded here
    assert alone.shape == (1, 32)
    np.testing.assert_allclose(batched[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    texts = [f"good text number {i}." for i in range(20)] + [f"가나다 {i}" for i in range(20)]
    clf, metrics = train_classifier(texts, [4] * 20 + [1] * 20, FeatureConfig(kind="encoder", encoder=str(enc)))
    clf.save(str(tmp_path / "clf"))
    again = QualityClassifier.load(str(tmp_path / "clf"))
    np.testing.assert_allclose(again.predict_proba(texts), clf.predict_proba(texts), rtol=1e-5)
    assert set(metrics["held_out"]) == {"precision", "recall", "f1", "n", "positives"}


def test_missing_encoder_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="encoder directory"):
        FeatureConfig(kind="encoder", encoder=str(tmp_path / "nope"))
