"""Errors that name what they are about: a config file that is not UTF-8 (which file, which line),
a model directory with no config.json or tokenizer (not transformers' sentencepiece message)."""

import pytest
import yaml

from kollm.data.chat import load_tokenizer


def test_a_config_with_invalid_bytes_names_the_file_and_line(tmp_path):
    from kollm.merge.config import parse_config
    from kollm.recipe import load_recipe
    from kollm.train.config import load_config

    f = tmp_path / "c.yaml"
    f.write_bytes(b"name: x\nseed: 0\nnote: caf\xff\n")  # 0xff: never UTF-8 (a Latin-1 export)
    for load in (load_config, parse_config, load_recipe):
        with pytest.raises(ValueError, match=rf"^{f}: not UTF-8 text \(byte 0xff at line 3, column 10\)"):
            load(f)


def test_an_empty_model_directory_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"^no config.json / tokenizer in {tmp_path}"):
        load_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text(yaml.safe_dump({"model_type": "llama"}))
    with pytest.raises(FileNotFoundError, match=rf"^no tokenizer \(tokenizer.json, .*\) in {tmp_path}$"):
        load_tokenizer(tmp_path)
