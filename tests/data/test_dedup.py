"""Exact + MinHash dedup: planted near-duplicates of real reviews are found; the survivor of a
cluster is its smallest source whatever the order."""

import json
import random
from pathlib import Path

import pytest

from kollm.data.dedup import DedupConfig, decide_duplicates, dedup_texts, jaccard

NSMC = Path("/work/shared/data/corpus/nsmc-reviews.jsonl")


def test_decide_keeps_smallest_source_per_cluster():
    sources = [["d", "b", "e"], ["a", "c", "f"]]
    hashes = [[1, 2, 3], [4, 2, 5]]  # (0,1) "b" and (1,1) "c" are exact duplicates
    pairs = [((0, 0), (1, 1)), ((1, 1), (0, 2)), ((1, 2), (1, 0))]  # d~c~e chain; f~a
    drops = decide_duplicates(sources, hashes, pairs)
    # exact: "b" < "c" keeps b; near: {d, c(already dropped), e} keeps d; {f, a} keeps a
    assert drops == {(1, 1): "exact_dup", (0, 2): "near_dup", (1, 2): "near_dup"}
    # the same decision whichever order the pairs come in
    assert decide_duplicates(sources, hashes, pairs[::-1]) == drops


def test_jaccard_of_character_shingles():
    assert jaccard("한국어 문장입니다", "한국어 문장입니다") == 1.0
    assert jaccard("abcdefgh", "stuvwxyz") == 0.0
    # punctuation and case are simplified away before shingling
    assert jaccard("Hello, World! Again", "hello world again") == 1.0


def _perturb(text: str, rng: random.Random) -> str:
    i = rng.randrange(len(text))
    kind = rng.randrange(4)
    if kind == 0:
        return text[:i] + text[i + 1:]
    if kind == 1:
        return text[:i] + rng.choice("가나다라마 .!") + text[i:]
    if kind == 2:
        return text + " ㅋㅋ"
    return text.replace(" ", "", 1) if " " in text else text + "!"


@pytest.mark.skipif(not NSMC.is_file(), reason="shared dev data absent")
def test_planted_near_duplicates_of_real_reviews(tmp_path):
    seen, pool = set(), []
    for line in NSMC.read_text(encoding="utf-8").splitlines():
        t = json.loads(line)["text"].strip()
        if len(t) >= 60 and t not in seen:
            seen.add(t)
            pool.append(t)
    rng = random.Random(0)
    rng.shuffle(pool)
    base, n = pool[:3000], 300
    variants = [_perturb(_perturb(t, rng), rng) for t in base[:n]]  # two edits each
    exact = base[n:n + 50]  # and 50 exact copies
    texts = base + variants + exact
    sources = [f"{i:06d}" for i in range(len(texts))]
    drops = dedup_texts(texts, sources, DedupConfig(), str(tmp_path))
    planted = set(range(n)) | set(range(3000, 3000 + n))
    caught = sum(i in drops or 3000 + i in drops for i in range(n))
    assert caught / n >= 0.9  # measured 0.97; J of the pairs averages 0.87
    near = [i for i, r in drops.items() if r == "near_dup"]
    assert sum(i in planted for i in near) / len(near) >= 0.99
    # exact copies: the later copy (larger source) goes, with the exact reason
    assert all(drops.get(3000 + n + k) == "exact_dup" for k in range(50))
    assert not any(n + k in drops for k in range(50))
    assert all(i >= 3000 for i in near if i in planted)  # the original (smaller source) survives
