"""scripts/compare_evals.py (docs/walkthrough.md's before/after table): a shorter "after" run is
compared with the same prefix of the "before" run's items, from the per-item samples."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import compare_evals  # noqa: E402


def _results(d: Path, accs: list[float], gold: list[float]) -> Path:
    d.mkdir()
    samples = [{"index": i, "metrics": {"acc": a}, "target": 1, "responses": [[-99.0, False], [g, False]]}
               for i, (a, g) in reversed(list(enumerate(zip(accs, gold))))]  # stored order is not item order
    (d / "results.json").write_text(json.dumps({"samples": {"kobest_copa": samples}}))
    return d


def test_before_is_scored_on_the_items_the_after_run_saw(tmp_path, capsys):
    before = _results(tmp_path / "b", [1, 0, 0, 1, 1, 1], [-10, -20, -30, -1, -1, -1])
    after = _results(tmp_path / "a", [1, 1, 0], [-5, -10, -15])
    assert compare_evals.main([str(before), str(after)]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row == "| kobest_copa | 3 | 0.33 ± 0.33 | 0.67 ± 0.33 | -20.0 | -10.0 |"
