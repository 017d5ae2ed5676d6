"""`kollm model info` prints memory in units that fit (a tiny preset is KiB/MiB, not "0.0 GiB"),
says the bf16 total includes the fp32 master weights, and says which context FLOPs are for."""

from kollm.cli import main
from kollm.model.cli import human_bytes


def test_units_fit_the_number():
    assert [human_bytes(n) for n in (512, 2048, 5 * 2**20 + 2**19, 59.8 * 2**30, 3 * 2**40)] == [
        "512 B", "2.0 KiB", "5.5 MiB", "59.8 GiB", "3.0 TiB"]


def test_model_info_tiny(capsys):
    assert main(["model", "info", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "0.0 GiB" not in out and "total 2.4 MiB" in out  # 158,016 params x 16 bytes
    assert "fp32 master copy" in out and "preset's full context" in out
