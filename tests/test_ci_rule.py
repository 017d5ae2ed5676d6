"""The suite's own rule (tests/conftest.py): under CI=true a missing peer of a parity test
(`pytest.importorskip`) fails the run instead of skipping; elsewhere it is a skip."""

import os
import shutil
import subprocess
import sys
from pathlib import Path


def _pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    shutil.copy(Path(__file__).parent / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_peer.py").write_text(
        "import pytest\n\n"
        "json = pytest.importorskip('json')  # present: imported either way\n\n\n"
        "def test_present():\n    assert json.dumps(1) == '1'\n\n\n"
        "def test_peer():\n    pytest.importorskip('kollm_no_such_peer')\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci else {})
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "-p", "no:randomly", "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_missing_peer_fails_under_ci(tmp_path):
    r = _pytest(tmp_path, "true")
    assert r.returncode == 1, r.stdout
    assert "1 failed, 1 passed" in r.stdout and "CI=true: could not import 'kollm_no_such_peer'" in r.stdout


def test_a_missing_peer_skips_elsewhere(tmp_path):
    r = _pytest(tmp_path, None)
    assert r.returncode == 0 and "1 passed, 1 skipped" in r.stdout, r.stdout
