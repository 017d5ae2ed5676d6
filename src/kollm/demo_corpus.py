"""A small embedded bilingual corpus for the demo: Korean and English documents generated from
templates with a fixed seed, so the demo needs no download and no external data. The documents
are parallel in content (the same facts in both languages), which is what XLDA packing pairs.

The corpus describes one fixed small world: each person always had the same lunch and has one
favourite subject, each city has one weather and one temperature. A 4-layer model learns these
facts in pretraining (each is stated hundreds of times) and, from the documents' questions and
answers (질문/답, Question/Answer), the form of an answer. Post-training asks questions about
them, a fact of the prompt's subject, the prompt stating it or not; each stage teaches a kind of
question the one before did not:
- SFT: mostly lunch and favourite subject, in the chat format (the reply is the value);
- DPO: the weather, the true reply against one with another weather;
- GRPO and evaluation: the temperature, the reward 1 when the reply's last number is right.
Held-out items by construction: the question about a fact (kind, subject i) is held out when
`held_out(kind, i)`; no training row of any stage (pretraining's questions included) asks it, and
every validation / evaluation item does. The facts themselves are in pretraining: a model can
only answer about what it has read. The demo's chat prompt (민수's lunch) is held out.

Korean particles follow the word they attach to (받침): 지영은 / 민수는, 불고기를 / 비빔밥을,
30은 / 12는 (numbers by their Sino-Korean reading: 삼십은, 십이는).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CITIES = [("서울", "Seoul"), ("부산", "Busan"), ("대구", "Daegu"), ("인천", "Incheon"), ("광주", "Gwangju"),
          ("대전", "Daejeon"), ("울산", "Ulsan"), ("제주", "Jeju"), ("수원", "Suwon"), ("전주", "Jeonju"),
          ("포항", "Pohang"), ("춘천", "Chuncheon"), ("강릉", "Gangneung"), ("여수", "Yeosu"), ("목포", "Mokpo"),
          ("청주", "Cheongju")]
WEATHER = [("맑음", "sunny"), ("흐림", "cloudy"), ("비", "rainy"), ("눈", "snowy"), ("바람", "windy")]
FOODS = [("김치찌개", "kimchi stew"), ("비빔밥", "bibimbap"), ("불고기", "bulgogi"), ("떡볶이", "tteokbokki"),
         ("냉면", "cold noodles"), ("삼계탕", "ginseng chicken soup")]
PEOPLE = [("민수", "Minsu"), ("지영", "Jiyoung"), ("서연", "Seoyeon"), ("준호", "Junho"), ("하늘", "Haneul"),
          ("현우", "Hyunwoo"), ("지민", "Jimin"), ("수빈", "Subin"), ("도윤", "Doyun"), ("예은", "Yeeun"),
          ("태희", "Taehee"), ("은지", "Eunji")]
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


KINDS = ("lunch", "subject", "weather", "temp")
TEMPS = range(-5, 34)


def held_out(kind: str, i: int) -> bool:
    """Whether questions about subject i's fact of this kind are kept out of all training data."""
    return (i + KINDS.index(kind)) % 2 == 0


def _world(seed: int = 7) -> dict[str, list[int]]:
    """The fact of each kind per subject (a value index; the temperature itself), fixed for all data.
    민수 had 비빔밥: the demo's chat prompt states a fact of this world."""
    rng = random.Random(seed)
    w = {"lunch": [rng.randrange(len(FOODS)) for _ in PEOPLE], "subject": [rng.randrange(len(SUBJECTS)) for _ in PEOPLE],
         "weather": [rng.randrange(len(WEATHER)) for _ in CITIES], "temp": [rng.choice(TEMPS) for _ in CITIES]}
    w["lunch"][0] = 1
    return w


WORLD = _world()


def _subjects(kind: str) -> list[tuple[str, str]]:
    return PEOPLE if kind in ("lunch", "subject") else CITIES


def _values(kind: str) -> list:
    return {"lunch": FOODS, "subject": SUBJECTS, "weather": WEATHER, "temp": list(TEMPS)}[kind]


def _statement(kind: str, s: tuple[str, str], v, lang: str) -> str:
    """The fact in one sentence."""
    ko = lang == "ko"
    name = s[0] if ko else s[1]
    if kind == "temp":
        return f"오늘 {name}의 기온은 {v}도입니다." if ko else f"Today the temperature in {name} is {v} degrees."
    val = v[0] if ko else v[1]
    if kind == "lunch":
        return f"{josa(name, '은/는')} 점심으로 {josa(val, '을/를')} 먹었습니다." if ko else f"{name} had {val} for lunch."
    if kind == "subject":
        return f"{josa(name, '이/가')} 가장 좋아하는 과목은 {val}입니다." if ko else f"{name}'s favourite subject is {val}."
    return f"오늘 {name}의 날씨는 {val}입니다." if ko else f"Today the weather in {name} is {val}."


def _question(kind: str, s: tuple[str, str], lang: str) -> str:
    ko = lang == "ko"
    name = s[0] if ko else s[1]
    return {"lunch": (f"{josa(name, '은/는')} 점심으로 무엇을 먹었습니까?", f"What did {name} have for lunch?"),
            "subject": (f"{josa(name, '이/가')} 가장 좋아하는 과목은 무엇입니까?", f"What is {name}'s favourite subject?"),
            "weather": (f"오늘 {name}의 날씨는 어떻습니까?", f"What is the weather in {name} today?"),
            "temp": (f"{name}의 기온은 몇 도입니까?", f"What is the temperature in {name}?")}[kind][0 if ko else 1]


def _answer(kind: str, s: tuple[str, str], v, lang: str) -> str:
    if kind == "temp":  # the statement without "today"
        return f"{s[0]}의 기온은 {v}도입니다." if lang == "ko" else f"The temperature in {s[1]} is {v} degrees."
    return _statement(kind, s, v, lang)


def _reply(kind: str, v, lang: str) -> str:
    """A chat reply: the value alone ("냉면을 먹었습니다." / "Cold noodles."). A reply that repeats
    the subject's name (the documents' answers do) is not learnt at this size for a subject no
    training question asked about: the model puts a trained name there."""
    if kind == "temp":
        return f"{v}도입니다." if lang == "ko" else f"{v} degrees."
    val = v[0] if lang == "ko" else v[1]
    if lang == "ko":
        return f"{josa(val, '을/를')} 먹었습니다." if kind == "lunch" else f"{val}입니다."
    return {"lunch": f"{val[0].upper()}{val[1:]}.", "subject": f"{val[0].upper()}{val[1:]}.",
            "weather": f"It is {val}."}[kind]


def _value(kind: str, i: int):
    return WORLD[kind][i] if kind == "temp" else _values(kind)[WORLD[kind][i]]


def _item(rng: random.Random, kind: str, held: bool, lang: str) -> dict:
    """A question about a subject's fact (held out or not), half the time after the fact itself:
    the prompt, the right answer, a wrong answer (another value), the value."""
    i = rng.choice([i for i in range(len(_subjects(kind))) if held_out(kind, i) == held])
    s, v = _subjects(kind)[i], _value(kind, i)
    w = rng.choice([x for x in _values(kind) if x != v])
    question = _question(kind, s, lang)
    prompt = f"{_statement(kind, s, v, lang)} {question}" if rng.random() < 0.5 else question
    return {"prompt": prompt, "answer": _reply(kind, v, lang), "wrong": _reply(kind, w, lang), "value": v}


def _document(rng: random.Random) -> tuple[str, str]:
    """One document in Korean and, with the same content, English: paragraphs of the world's facts,
    most followed by the question about the paragraph's last fact and its answer (질문/답,
    Question/Answer), unless that question is held out."""
    paras = [[(kind, rng.randrange(len(_subjects(kind)))) for kind in rng.sample(KINDS, k=rng.randint(3, 4))]
             for _ in range(rng.randint(3, 5))]
    asked = [rng.random() < 0.8 and not held_out(*para[-1]) for para in paras]
    out = []
    for lang, q_word, a_word in (("ko", "질문", "답"), ("en", "Question", "Answer")):
        text = []
        for para, qa in zip(paras, asked):
            line = " ".join(_statement(kind, _subjects(kind)[i], _value(kind, i), lang) for kind, i in para)
            if qa:
                kind, i = para[-1]
                line += (f" {q_word}: {_question(kind, _subjects(kind)[i], lang)} {a_word}: "
                         f"{_answer(kind, _subjects(kind)[i], _value(kind, i), lang)}")
            text.append(line)
        out.append("\n\n".join(text))
    return out[0], out[1]


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


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


# the fact kinds each post-training stage asks about
# SFT: mostly lunches and subjects, one question in ten about weather or temperature (the chat
# form of those replies); DPO and GRPO then teach the right weather and temperature
SFT_KINDS = ("lunch", "subject", "lunch", "subject", "weather", "lunch", "subject", "lunch", "subject", "temp")
DPO_KINDS = ("weather",)
GRPO_KINDS = ("temp",)


def write_demo_posttrain(out_dir: str | Path, n_train: int = 1200, n_val: int = 100, seed: int = 1) -> dict[str, Path]:
    """The demo's post-training data, Korean and English alternating, each with `train.jsonl`
    (questions never held out) and `val.jsonl` (held-out questions): `chat/` (OpenAI messages:
    SFT), `pairs/` (TRL prompt/chosen/rejected, the right answer against another value: DPO) and `math/` (prompt/answer with the number as the verifiable answer: GRPO); and
    `eval/HRM8K/GSM8K/test.jsonl`, GRPO's held-out task parallel in Korean and English in HRM8K's
    schema for `kollm eval --tasks hrm8k_en,hrm8k_ko --consistency hrm8k_en:hrm8k_ko`."""
    out = Path(out_dir)
    rng = random.Random(seed)
    rows: dict[str, dict[str, list]] = {name: {"train": [], "val": []} for name in ("chat", "pairs", "math")}
    for split, n in (("train", n_train), ("val", n_val)):
        held = split == "val"
        for i in range(n):
            lang = "ko" if i % 2 == 0 else "en"
            it = _item(rng, SFT_KINDS[i // 2 % len(SFT_KINDS)], held, lang)
            rows["chat"][split].append({"messages": [{"role": "user", "content": it["prompt"]},
                                                     {"role": "assistant", "content": it["answer"]}]})
            it = _item(rng, DPO_KINDS[i // 2 % len(DPO_KINDS)], held, lang)
            rows["pairs"][split].append({"prompt": [{"role": "user", "content": it["prompt"]}],
                                         "chosen": [{"role": "assistant", "content": it["answer"]}],
                                         "rejected": [{"role": "assistant", "content": it["wrong"]}]})
            it = _item(rng, GRPO_KINDS[i // 2 % len(GRPO_KINDS)], held, lang)
            rows["math"][split].append({"prompt": it["prompt"], "answer": str(it["value"])})
    # evaluation: GRPO's held-out task, the same item in both languages (HRM8K's released schema:
    # question in Korean, original in English): hrm8k_ko / hrm8k_en and their consistency
    hrm = []
    for _ in range(n_val):
        state = rng.getstate()
        ko = _item(rng, GRPO_KINDS[0], True, "ko")
        rng.setstate(state)
        en = _item(rng, GRPO_KINDS[0], True, "en")
        hrm.append({"question": ko["prompt"], "original": en["prompt"], "answer": ko["value"]})
    _write_jsonl(out / "eval" / "HRM8K" / "GSM8K" / "test.jsonl", hrm)
    paths = {"eval": out / "eval"}
    for name, data in rows.items():
        for split, r in data.items():
            _write_jsonl(out / name / f"{split}.jsonl", r)
        paths[name] = out / name
    return paths
