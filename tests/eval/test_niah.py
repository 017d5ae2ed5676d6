"""Needle in a haystack: cases fit their length budget, the needle sits once at the asked depth,
Korean filler is grammatical, scoring by the needle value, the harness run, and the heat map PNG."""

import re

import pytest

from kollm.eval.harness import evaluate
from kollm.eval.niah import (
    NEEDLES,
    NiahConfig,
    build_cases,
    cells_from_metrics,
    filler_sentences,
    plot_heatmap,
    score,
)
from kollm.eval.task import get_task


def words(text: str) -> int:  # an exact "tokenizer" for checking budgets
    return len(text.split())


@pytest.mark.parametrize("lang", ["en", "ko"])
def test_cases_fit_and_needle_at_depth(lang):
    cfg = NiahConfig(lang=lang, lengths=[200, 800], depths=[0, 25, 50, 100])
    cases = build_cases(cfg, words)
    assert [(c["length"], c["depth"]) for c in cases] == [(n, d) for n in (200, 800) for d in (0, 25, 50, 100)]
    for c in cases:
        n = words(c["prompt"])
        assert 0.9 * c["length"] <= n <= c["length"], (c["length"], n)
        assert c["prompt"].count(c["value"]) == 1 and re.fullmatch(r"\d{7}", c["value"])
        # the share of haystack words before the needle is the depth, to within one sentence (<= 12 words)
        head, tail = NEEDLES[lang]["prompt"].split("{haystack}")
        before, after = c["prompt"].split(NEEDLES[lang]["needle"].format(value=c["value"]))
        pre, post = words(before) - words(head), words(after) - words(tail)
        assert abs(pre / (pre + post) - c["depth"] / 100) <= 12 / (pre + post), (c["depth"], pre, post)
        if c["depth"] == 0:
            assert c["needle_index"] == 0
        if c["depth"] == 100:
            assert c["needle_index"] == c["n_sentences"] - 1
    assert len({c["value"] for c in cases}) == len(cases)  # a fresh value per cell
    assert build_cases(cfg, words) == cases  # deterministic


def test_korean_filler_particles():
    sents = filler_sentences("ko", 200, seed=3)
    text = " ".join(sents)
    assert "빵집 주인은" in text or "빵집 주인" not in text
    assert "농부는" in text and "농부은" not in text and "산길을" in text and "배를" in text
    assert all(s.endswith("다.") for s in sents)


def test_user_haystack_and_errors(tmp_path):
    f = tmp_path / "essay.txt"
    f.write_text("Paul wrote essays. They were about startups!\nSome were long. ")
    case = build_cases(NiahConfig(lengths=[300], depths=[50], haystack=str(f)), words)[0]
    assert "Paul wrote essays." in case["prompt"] and "filler" not in case["prompt"]
    with pytest.raises(ValueError, match="exceed the model's max_length 4096"):
        NiahConfig(lengths=[4096, 8192], max_length=4096)
    with pytest.raises(ValueError, match="depths"):
        NiahConfig(depths=[120])
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['lenghts'\]; known: depths, .*seed, tokenizer"):
        get_task("niah_en", lenghts=[100])


def test_score():
    assert score("The special magic number is 4,821,337.", "4821337") == 1.0
    assert score("특별한 마법의 숫자는 4821337입니다", "4821337") == 1.0 and score("4821338", "4821337") == 0.0


class ShortSightedModel:
    """Finds the needle only within its last `reach` words of context (a model whose effective
    context is shorter than the prompt): the accuracy map must show exactly that."""

    name = "short-sighted"

    def __init__(self, reach):
        self.reach = reach

    def generate(self, requests):
        out = []
        for r in requests:
            tail = " ".join(r.args[0].split()[-self.reach:])
            m = re.search(r"(?:number is|숫자는) (\d{7})", tail)
            out.append(f" {m.group(1)}." if m else " I do not know.")
        return out

    def loglikelihood(self, pairs):
        raise AssertionError("niah only generates")


def test_harness_run_and_heatmap(tmp_path):
    task = get_task("niah_ko", lengths=[100, 1000], depths=[0, 50, 100])
    res = evaluate(ShortSightedModel(reach=150), [task], log=lambda m: None)
    metrics = res["results"]["niah_ko"]["metrics"]
    cells = cells_from_metrics(metrics)
    # 100-token prompts (~40 words) are all within reach; at 1000 (~400 words) only the needle near the end (depth 100) is
    assert cells == {(100, 0.0): 1.0, (100, 50.0): 1.0, (100, 100.0): 1.0,
                     (1000, 0.0): 0.0, (1000, 50.0): 0.0, (1000, 100.0): 1.0}
    assert metrics["acc"]["value"] == pytest.approx(4 / 6)
    png = plot_heatmap(cells, tmp_path / "niah.png", "test")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    from PIL import Image

    img = Image.open(png).convert("RGB")
    w, h = img.size
    assert w > 100 and h > 100


def test_heatmap_command_errors(tmp_path, capsys):
    from kollm.eval.niah import main

    with pytest.raises(SystemExit):
        main([str(tmp_path / "results.json")])
    assert "no such results.json" in capsys.readouterr().err
    (tmp_path / "results.json").write_text('{"results": {"kobest_copa": {}}}')
    with pytest.raises(SystemExit):
        main([str(tmp_path / "results.json"), "--task", "niah_ko"])
    assert "no task 'niah_ko' (has ['kobest_copa'])" in capsys.readouterr().err
