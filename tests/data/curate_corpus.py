"""A small generated Korean + English corpus with planted exact copies, for the executor tests
(Slurm dry run, Ray): self-contained, so they run where /work/shared/data is absent."""

import json
import random
from pathlib import Path

import pyarrow.parquet as pq

LOOSE = {"all": {"min_units": 3, "min_mean_word_len": None, "min_stop_words": None}}
WORDS_EN = ("the a river market school winter garden bridge letter morning station city people water house "
            "small old new green long road friend book music night light window train street house family "
            "was is went saw made found opened walked near under over with from into after before and but").split()
WORDS_KO = ("오늘은 어제 시장에 학교에서 친구와 함께 공원을 걸었다 날씨가 맑았다 사과를 샀다 그리고 하지만 "
            "아침에 저녁에 도서관에서 책을 읽었다 음악을 들었다 기차를 탔다 바다를 보았다 집으로 돌아왔다 "
            "동생이 어머니가 선생님이 새로운 오래된 작은 큰 길을 따라 창문을 열었다 편지를 썼다").split()


def write_corpus(d: Path) -> None:
    """Two files of Korean and English sentences with planted exact copies (dedup has work to do)."""
    for k, words in enumerate((WORDS_EN, WORDS_KO)):
        rng = random.Random(k)
        rows = [{"id": f"{k}-{i}", "text": " ".join(rng.choice(words) for _ in range(rng.randint(15, 40))) + "."}
                for i in range(60)]
        rows += [{"id": f"{k}-copy-{i}", "text": rows[i]["text"]} for i in range(6)]
        (d / f"part{k}.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                                          encoding="utf-8")


def read_rows(out: Path) -> list[dict]:
    rows = [r for f in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return sorted(rows, key=lambda r: r["source"])
