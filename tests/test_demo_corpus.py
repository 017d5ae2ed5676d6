"""The demo's embedded Korean reads as Korean: every particle agrees with the word before it
(checked against an independent spelling of the numbers in Sino-Korean, not the code's table)."""

import json
import re

import pytest

from kollm.demo_corpus import josa, write_demo_corpus, write_demo_posttrain

DIGITS = "영일이삼사오육칠팔구"


def sino_korean(n: int) -> str:
    """12 → 십이, 30 → 삼십, 40 → 사십 (the reading the particle follows)."""
    if n < 10:
        return DIGITS[n]
    tens, ones = divmod(n, 10)
    return ("" if tens == 1 else DIGITS[tens]) + "십" + (DIGITS[ones] if ones else "")


def batchim(syllable: str) -> bool:
    return (ord(syllable) - 0xAC00) % 28 != 0


@pytest.mark.parametrize("word,pair,expected", [
    ("지영", "은/는", "지영은"), ("민수", "은/는", "민수는"), ("하늘", "이/가", "하늘이"), ("준호", "이/가", "준호가"),
    ("불고기", "을/를", "불고기를"), ("비빔밥", "을/를", "비빔밥을"), ("30", "은/는", "30은"), ("12", "은/는", "12는"),
])
def test_particles_follow_the_last_sound(word, pair, expected):
    assert josa(word, pair) == expected


def test_every_particle_in_the_generated_korean_agrees(tmp_path):
    corpus = write_demo_corpus(tmp_path / "raw", n_docs=200)
    post = write_demo_posttrain(tmp_path / "post", n_train=200, n_val=10)
    texts = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines()
             if line.startswith('{"id": "ko-')]
    texts += [json.dumps(json.loads(line), ensure_ascii=False) for line in
              (post["pairs"] / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    checked = 0
    for text in texts:
        for word, particle in re.findall(r"([0-9]+|[가-힣]+?)(은|는|이|가|을|를)(?= )", text):
            if word.isdigit():
                reading = sino_korean(int(word))
            elif word in ("지영", "민수", "하늘", "서연", "준호", "김치찌개", "비빔밥", "불고기", "떡볶이", "냉면",
                          "삼계탕"):
                reading = word
            else:
                continue
            consonant = batchim(reading[-1])
            assert particle in (("은", "이", "을") if consonant else ("는", "가", "를")), (word, particle, text[:80])
            checked += 1
    assert checked > 1000


def test_demo_seed_draws_another_demo(tmp_path, monkeypatch):
    """`kollm demo --seed 3`: other documents and post-training rows (same world, same held-out
    questions), and every training stage of the recipe runs with seed 3; seed 0 is the recipe as written."""
    import kollm.demo as demo

    seen = {}
    monkeypatch.setattr(demo, "run_recipe", lambda recipe, force=False: seen.setdefault("stages", recipe.stages))
    assert demo.main(["--workdir", str(tmp_path / "s0")]) == 0
    plain = {s.name: list(s.args) for s in seen.pop("stages")}
    assert demo.main(["--workdir", str(tmp_path / "s3"), "--seed", "3"]) == 0
    seeded = {s.name: list(s.args) for s in seen["stages"]}
    for name in plain:
        extra = seeded[name][len(plain[name]):]
        assert extra == (["--set", "seed=3"] if name in ("pretrain", "sft", "dpo", "grpo") else []), name
        assert "seed=0" not in " ".join(plain[name]), name
    for rel in ("raw/demo.jsonl", "posttrain/chat/train.jsonl", "posttrain/math/val.jsonl"):
        assert (tmp_path / "s0" / rel).read_bytes() != (tmp_path / "s3" / rel).read_bytes(), rel
