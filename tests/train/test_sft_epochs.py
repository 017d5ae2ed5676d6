"""`data.epochs` (kollm.train.sft): the SFT phase's steps come from the data, ⌈rows × epochs ÷
rows per step⌉ (Tulu 3 counts epochs): the dry run prints the count (data.planned_rows while the
data is not there), and a run trains exactly that many steps."""

import json
import math
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sft_fixtures import make_model_dir, math_rows, sft_config, write_jsonl  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def test_steps_from_rows_times_epochs(tmp_path, capsys):
    from kollm.cli import main
    from kollm.data.chat import load_tokenizer
    from kollm.train.config import config_from_dict
    from kollm.train.sft import count_rows, with_epochs

    model = make_model_dir(tmp_path / "model")
    train = write_jsonl(tmp_path / "train.jsonl", math_rows(12))
    raw = sft_config(model, train, tmp_path / "run", steps=999, seq_len=128, batch_size=2)
    raw["data"] |= {"epochs": 1.5}
    raw["validation"] = {"every": 0}
    raw["checkpoint"]["every"] = 0
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(raw))
    rows = count_rows(config_from_dict(raw), load_tokenizer(model))
    want = math.ceil(rows * 1.5 / 2)  # batch.tokens 256 ÷ seq_len 128 = 2 rows per step
    assert rows > 4 and with_epochs(config_from_dict(raw), rows)[0].phases[0].steps == want

    assert main(["sft", str(tmp_path / "sft.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"one epoch = {rows} rows" in out
    assert f"steps from the data: ⌈{rows:,} rows × 1.5 epochs ÷ 2 rows per step⌉ = {want:,}" in out
    # without the data: data.planned_rows
    assert main(["sft", str(tmp_path / "sft.yaml"), "--dry-run", "--set", "data.train=missing.jsonl",
                 "--set", "data.planned_rows=1000"]) == 0
    assert "⌈1,000 rows × 1.5 epochs ÷ 2 rows per step⌉ = 750" in capsys.readouterr().out

    assert main(["sft", str(tmp_path / "sft.yaml")]) == 0  # trains exactly the derived steps
    steps = [json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == want
    with pytest.raises(ValueError, match="data.epochs .* one SFT phase"):
        with_epochs(config_from_dict(raw | {"phases": raw["phases"] + [dict(raw["phases"][0], name="b")]}), rows)
