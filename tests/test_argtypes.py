"""Counts out of range are refused at the command line naming the flag (`data tokenize --workers 0
/ --batch-size -5`, `eval --limit -1`, which scored 3 of 4 items), and by the functions behind them."""

import pytest

from kollm.cli import main


@pytest.mark.parametrize("argv, flag", [
    (["data", "tokenize", "in.jsonl", "--tokenizer", "t.json", "--out", "o", "--workers", "0"], "--workers"),
    (["data", "tokenize", "in.jsonl", "--tokenizer", "t.json", "--out", "o", "--batch-size", "-5"], "--batch-size"),
    (["data", "curate", "--input", "x", "--output", "o", "--workers", "0"], "--workers"),
    (["eval", "--model", "m", "--tasks", "kobest_copa", "--limit", "-1"], "--limit"),
    (["eval", "--model", "m", "--tasks", "kobest_copa", "--limit", "0"], "--limit"),
    (["eval", "--model", "m", "--tasks", "kobest_copa", "--batch-tokens", "0"], "--batch-tokens"),
])
def test_nonpositive_counts_are_refused_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: must be a positive integer" in err, err


def test_a_negative_shot_count_is_refused_not_run_zero_shot(capsys):
    with pytest.raises(SystemExit) as e:  # -3 shots ran 0-shot and said nothing
        main(["eval", "--model", "m", "--tasks", "kobest_copa", "--num-fewshot", "-3"])
    assert e.value.code == 2
    assert "argument --num-fewshot: must be an integer >= 0, got -3" in capsys.readouterr().err
    # the per-task form, TASK:SHOTS, before any model is loaded
    assert main(["eval", "--model", "m", "--tasks", "kobest_copa:-3"]) == 1
    assert "--tasks kobest_copa:-3: shots must be an integer >= 0, got '-3'" in capsys.readouterr().err


def test_the_functions_refuse_them_too(tmp_path):
    from kollm.data.tokenize import tokenize
    from kollm.eval.harness import EvalConfig

    with pytest.raises(ValueError, match="batch_size must be a positive integer, got -5"):
        tokenize([str(tmp_path)], tmp_path / "t.json", tmp_path / "o", workers=1, batch_size=-5)
    with pytest.raises(ValueError, match="workers must be a positive integer, got 0"):
        tokenize([str(tmp_path)], tmp_path / "t.json", tmp_path / "o", workers=0)
    with pytest.raises(ValueError, match=r"limit must be a positive number of items \(None: all\), got -1"):
        EvalConfig(limit=-1)
    assert EvalConfig(limit=None).limit is None
    with pytest.raises(ValueError, match=r"num_fewshot must be >= 0 \(None: each task's default\), got -3"):
        EvalConfig(num_fewshot=-3)
    assert EvalConfig(num_fewshot=0).num_fewshot == 0
