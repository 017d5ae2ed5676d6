"""A small embedded bilingual corpus for the demo: Korean and English documents generated from
templates with a fixed seed, so the demo needs no download and no external data. The documents
are parallel in content (the same facts in both languages), which is what XLDA packing pairs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CITIES = [("서울", "Seoul"), ("부산", "Busan"), ("대구", "Daegu"), ("인천", "Incheon"), ("광주", "Gwangju"),
          ("대전", "Daejeon"), ("울산", "Ulsan"), ("제주", "Jeju"), ("수원", "Suwon"), ("전주", "Jeonju")]
WEATHER = [("맑음", "sunny"), ("흐림", "cloudy"), ("비", "rainy"), ("눈", "snowy"), ("바람", "windy")]
FOODS = [("김치찌개", "kimchi stew"), ("비빔밥", "bibimbap"), ("불고기", "bulgogi"), ("떡볶이", "tteokbokki"),
         ("냉면", "cold noodles"), ("삼계탕", "ginseng chicken soup")]
PEOPLE = [("민수", "Minsu"), ("지영", "Jiyoung"), ("서연", "Seoyeon"), ("준호", "Junho"), ("하늘", "Haneul")]
SUBJECTS = [("수학", "math"), ("역사", "history"), ("과학", "science"), ("음악", "music"), ("영어", "English")]


def _facts(rng: random.Random) -> tuple[list[str], list[str]]:
    """Four facts rendered in Korean and in English."""
    city_ko, city_en = rng.choice(CITIES)
    w_ko, w_en = rng.choice(WEATHER)
    temp = rng.randint(-5, 33)
    food_ko, food_en = rng.choice(FOODS)
    p_ko, p_en = rng.choice(PEOPLE)
    s_ko, s_en = rng.choice(SUBJECTS)
    a, b = rng.randint(2, 40), rng.randint(2, 40)
    ko = [
        f"오늘 {city_ko}의 날씨는 {w_ko}이고 기온은 {temp}도입니다.",
        f"{p_ko}는 점심으로 {food_ko}을 먹었습니다.",
        f"{p_ko}가 가장 좋아하는 과목은 {s_ko}입니다.",
        f"{a} 더하기 {b}는 {a + b}입니다.",
    ]
    en = [
        f"Today the weather in {city_en} is {w_en} and the temperature is {temp} degrees.",
        f"{p_en} had {food_en} for lunch.",
        f"{p_en}'s favourite subject is {s_en}.",
        f"{a} plus {b} is {a + b}.",
    ]
    return ko, en


def _document(rng: random.Random) -> tuple[str, str]:
    """One document (a few paragraphs of facts) in Korean and, with the same content, English."""
    ko_paras, en_paras = [], []
    for _ in range(rng.randint(4, 7)):
        ko, en = _facts(rng)
        order = rng.sample(range(4), k=rng.randint(3, 4))
        ko_paras.append(" ".join(ko[i] for i in order))
        en_paras.append(" ".join(en[i] for i in order))
    return "\n\n".join(ko_paras), "\n\n".join(en_paras)


def write_demo_corpus(out_dir: str | Path, n_docs: int = 1000, seed: int = 0) -> Path:
    """Write `demo.jsonl` with n_docs Korean and n_docs English documents (plus two malformed
    rows, so the demo shows how bad input is reported rather than dropped silently)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    path = out / "demo.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(n_docs):
            ko, en = _document(rng)
            f.write(json.dumps({"id": f"ko-{i}", "text": ko, "lang": "ko"}, ensure_ascii=False) + "\n")
            f.write(json.dumps({"id": f"en-{i}", "text": en, "lang": "en"}) + "\n")
            if i == n_docs // 2:
                f.write('{"id": "broken", "text": "unterminated\n')
                f.write(json.dumps({"id": "no-text"}) + "\n")
    return path
