"""A small embedded bilingual corpus for the demo: Korean and English documents generated from
templates with a fixed seed, so the demo needs no download and no external data. The documents
are parallel in content (the same facts in both languages), which is what XLDA packing pairs.
The same facts become the post-training data of the demo: chat conversations (SFT), preference
pairs of a right and a wrong answer (DPO) and arithmetic prompts with verifiable answers (GRPO).

Korean particles follow the word they attach to (받침): 지영은 / 민수는, 불고기를 / 비빔밥을,
30은 / 12는 (numbers by their Sino-Korean reading: 삼십은, 십이는).
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


# final sound of a number's Sino-Korean reading: does it end in a consonant (받침)?
_DIGIT_BATCHIM = {"0": True, "1": True, "2": False, "3": True, "4": False, "5": False, "6": True, "7": True,
                  "8": True, "9": False}


def has_batchim(word: str) -> bool:
    """Whether the word's last sound is a consonant: Hangul by its final jamo, digits by their
    Sino-Korean reading (10 십, 100 백, 1000 천 and 만 all end in a consonant)."""
    last = word.rstrip()[-1]
    if "가" <= last <= "힣":
        return (ord(last) - 0xAC00) % 28 != 0
    if last.isdigit():
        return _DIGIT_BATCHIM[last]  # a final 0 reads 영, 십, 백, 천 or 만: a consonant every time
    return False


def josa(word: str, pair: str) -> str:
    """`word` with the particle of `pair` (after a consonant / after a vowel: "은/는", "이/가",
    "을/를", "과/와") that fits it."""
    with_consonant, after_vowel = pair.split("/")
    return word + (with_consonant if has_batchim(word) else after_vowel)


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
        f"{josa(p_ko, '은/는')} 점심으로 {josa(food_ko, '을/를')} 먹었습니다.",
        f"{josa(p_ko, '이/가')} 가장 좋아하는 과목은 {s_ko}입니다.",
        f"{a} 더하기 {josa(str(b), '은/는')} {a + b}입니다.",
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


def _qa(rng: random.Random) -> tuple[str, str, str, str, str, str]:
    """One question in Korean and English: (ko question, ko answer, ko wrong answer, en question,
    en answer, en wrong answer); the context the answer needs is in the question."""
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        wrong = a + b + rng.choice([-3, -2, -1, 1, 2, 3])
        lhs = f"{a} 더하기 {josa(str(b), '은/는')}"
        return (f"{lhs} 얼마입니까?", f"{lhs} {a + b}입니다.", f"{lhs} {wrong}입니다.",
                f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", f"{a} plus {b} is {wrong}.")
    if kind == 1:
        p_ko, p_en = rng.choice(PEOPLE)
        (f_ko, f_en), (g_ko, g_en) = rng.sample(FOODS, 2)
        fact = f"{josa(p_ko, '은/는')} 점심으로 {josa(f_ko, '을/를')} 먹었습니다."
        return (f"{fact} {josa(p_ko, '은/는')} 점심으로 무엇을 먹었습니까?", fact,
                f"{josa(p_ko, '은/는')} 점심으로 {josa(g_ko, '을/를')} 먹었습니다.",
                f"{p_en} had {f_en} for lunch. What did {p_en} have for lunch?", f"{p_en} had {f_en} for lunch.",
                f"{p_en} had {g_en} for lunch.")
    c_ko, c_en = rng.choice(CITIES)
    t = rng.randint(-5, 33)
    w = t + rng.choice([-4, -2, 2, 4])
    return (f"오늘 {c_ko}의 기온은 {t}도입니다. {c_ko}의 기온은 몇 도입니까?", f"{c_ko}의 기온은 {t}도입니다.",
            f"{c_ko}의 기온은 {w}도입니다.",
            f"Today the temperature in {c_en} is {t} degrees. What is the temperature in {c_en}?",
            f"The temperature in {c_en} is {t} degrees.", f"The temperature in {c_en} is {w} degrees.")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def write_demo_posttrain(out_dir: str | Path, n_train: int = 1200, n_val: int = 100, seed: int = 1) -> dict[str, Path]:
    """The demo's post-training data from the same templates, Korean and English alike:
    `chat/` (OpenAI messages: SFT), `pairs/` (TRL prompt/chosen/rejected, a right answer against
    a wrong one: DPO) and `math/` (prompt/answer arithmetic with a verifiable answer: GRPO),
    each with `train.jsonl` and `val.jsonl`; and `eval/HRM8K/GSM8K/test.jsonl`, parallel arithmetic
    in HRM8K's schema for `kollm eval --tasks hrm8k_en,hrm8k_ko --consistency hrm8k_en:hrm8k_ko`."""
    out = Path(out_dir)
    rng = random.Random(seed)
    splits = {"train": n_train, "val": n_val}
    chat: dict[str, list] = {s: [] for s in splits}
    pairs: dict[str, list] = {s: [] for s in splits}
    math: dict[str, list] = {s: [] for s in splits}
    for split, n in splits.items():
        for i in range(n):
            q_ko, a_ko, w_ko, q_en, a_en, w_en = _qa(rng)
            q, a, w = (q_ko, a_ko, w_ko) if i % 2 == 0 else (q_en, a_en, w_en)
            chat[split].append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
            pairs[split].append({"prompt": [{"role": "user", "content": q}],
                                 "chosen": [{"role": "assistant", "content": a}],
                                 "rejected": [{"role": "assistant", "content": w}]})
            a1, b1 = rng.randint(2, 40), rng.randint(2, 40)
            prompt = (f"{a1} 더하기 {josa(str(b1), '은/는')} 얼마입니까?" if i % 2 == 0 else f"What is {a1} plus {b1}?")
            math[split].append({"prompt": prompt, "answer": str(a1 + b1)})
    # evaluation: the same arithmetic, parallel in both languages, in HRM8K's released schema
    # (question in Korean, original in English): hrm8k_ko / hrm8k_en and their consistency
    hrm = []
    for _ in range(n_val):
        a1, b1 = rng.randint(2, 40), rng.randint(2, 40)
        hrm.append({"question": f"{a1} 더하기 {josa(str(b1), '은/는')} 얼마입니까?",
                    "original": f"What is {a1} plus {b1}?", "answer": a1 + b1})
    _write_jsonl(out / "eval" / "HRM8K" / "GSM8K" / "test.jsonl", hrm)
    paths = {"eval": out / "eval"}
    for name, data in (("chat", chat), ("pairs", pairs), ("math", math)):
        for split, rows in data.items():
            _write_jsonl(out / name / f"{split}.jsonl", rows)
        paths[name] = out / name
    return paths
