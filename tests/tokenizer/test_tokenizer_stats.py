import json

import pytest

from kollm.cli import main as cli_main
from kollm.tokenizer.stats import measure, table
from kollm.tokenizer.train import byte_level_base, save


def test_byte_tokenizer_has_known_ratios():
    """Without merges every UTF-8 byte is one token: a Hangul syllable (3 bytes) is 3 tokens."""
    tok = byte_level_base()
    ko = measure(tok, ["한국어 문장", "가나다"], "ko")
    assert (ko.docs, ko.chars, ko.words, ko.bytes, ko.tokens) == (2, 9, 3, 25, 25)
    assert ko.bytes_per_token == 1.0 and ko.tokens_per_char == pytest.approx(25 / 9)
    assert ko.tokens_per_word == pytest.approx(25 / 3) and ko.tokens_per_second > 0
    en = measure(tok, ["hello world"], "en")
    assert (en.tokens, en.tokens_per_char, en.tokens_per_word) == (11, 1.0, 5.5)
    assert "| byte | ko | 2 | 25 | 2.7778 | 8.333 | 1.000 |" in table([("byte", ko)])


def test_measure_rejects_empty():
    with pytest.raises(ValueError, match="no texts"):
        measure(byte_level_base(), [], "ko")


def test_stats_cli_json(tmp_path, capsys):
    save(byte_level_base(), tmp_path / "tok")
    (tmp_path / "ko.txt").write_text("한국어\n가나\n")
    assert cli_main(["tokenizer", "stats", str(tmp_path / "tok"), "--input", f"ko={tmp_path / 'ko.txt'}",
                     "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["tokenizer"], row["lang"], row["tokens"], row["chars"]) == (str(tmp_path / "tok"), "ko", 15, 5)
