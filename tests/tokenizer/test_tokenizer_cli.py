import json

from tokenizers import Tokenizer

from kollm.cli import main as cli_main


def test_train_extend_stats_from_the_command_line(tmp_path, corpus, capsys):
    en, ko = tmp_path / "en.txt", tmp_path / "ko.jsonl"
    en.write_text("\n".join(corpus["train"]["en"]))
    ko.write_text("".join(json.dumps({"text": t, "lang": "ko"}, ensure_ascii=False) + "\n"
                          for t in corpus["train"]["ko"]) + "{broken\n")
    out = tmp_path / "tok"
    assert cli_main(["tokenizer", "train", "--input", f"en={en}", "--input", str(ko), "--budget", "en=400",
                     "--budget", "ko=300", "--series", "ko=50,150", "--vocab-size", "1000", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "ko: 300 tokens, ids 656..955" in printed.out and "'bad_json': 1" in printed.err
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.get_vocab_size() == 1000
    for k in (50, 150):
        sub = Tokenizer.from_file(str(out / f"ko-{k}" / "tokenizer.json"))
        assert sub.get_vocab_size(with_added_tokens=False) == 656 + k
        assert json.loads((out / f"ko-{k}" / "tokenizer_config.json").read_text())["chat_template"]

    en_tok = tmp_path / "en-tok"
    assert cli_main(["tokenizer", "train", "--input", f"en={en}", "--budget", "en=400", "--out", str(en_tok)]) == 0
    ext = tmp_path / "ext"
    assert cli_main(["tokenizer", "extend", "--base", str(en_tok), "--input", f"ko={ko}", "--add", "300",
                     "--out", str(ext)]) == 0
    assert "added 300 ko tokens (ids 662..961)" in capsys.readouterr().out

    assert cli_main(["tokenizer", "stats", str(en_tok), str(ext), "--input", str(ko), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["tokenizer"] for r in rows] == [str(en_tok), str(ext)]
    assert rows[1]["tokens_per_char"] < 0.7 * rows[0]["tokens_per_char"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["tokenizer", "train", "--input", f"ko={tmp_path}/none.txt", "--budget", "ko=10",
                     "--out", str(tmp_path / "o")]) == 1
    assert "no files match" in capsys.readouterr().err
    assert cli_main(["tokenizer", "train", "--input", "x", "--budget", "ko", "--out", "o"]) == 1
    assert "--budget must look like LANG=VALUE" in capsys.readouterr().err


def test_extend_keeps_the_base_chat_template_file(tmp_path, corpus, capsys):
    """transformers 5 saves a chat template to chat_template.jinja, not tokenizer_config.json: the
    extended tokenizer must carry it, or SFT of the extended model silently uses kollm's default."""
    from transformers import AutoTokenizer

    from kollm.data.chat import load_tokenizer

    ko = tmp_path / "ko.txt"
    ko.write_text("\n".join(corpus["train"]["ko"]))
    base = tmp_path / "base"
    assert cli_main(["tokenizer", "train", "--input", f"ko={ko}", "--budget", "ko=300", "--out", str(base)]) == 0
    hf = AutoTokenizer.from_pretrained(base)
    hf.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    hf.save_pretrained(base)
    assert (base / "chat_template.jinja").is_file()
    ext = tmp_path / "ext"
    assert cli_main(["tokenizer", "extend", "--base", str(base), "--input", f"ko={ko}", "--add", "50",
                     "--out", str(ext)]) == 0
    assert load_tokenizer(ext).chat_template == hf.chat_template
