"""Needle in a haystack: can the model retrieve one fact placed at a chosen depth of a long context?

Follows Greg Kamradt's LLMTest_NeedleInAHaystack (context lengths x depth percents, the needle
inserted at a sentence boundary at `depth`% of the haystack, accuracy heat map) with RULER-style
scoring: the needle carries a random 7-digit value and an answer is right when it contains that
value. English and Korean needles; the haystack is a user's text file (repeated to length) or
built-in filler generated from templates (deterministic from the seed; Korean filler picks
particles by final consonant so it reads as Korean). Lengths are in the model's tokens when a
`count_tokens` function is given (kollm.eval.tasks.niah passes the model tokenizer), else
estimated as UTF-8 bytes / 4. The Trillion report tests to 32K and claims 128K: pass lengths up
to the model's maximum; a case longer than `max_length` is an error, not silently cut.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

NEEDLES = {
    "en": {"needle": "The special magic number is {value}.",
           "prompt": "Below is a long document. Read it and answer the question after it.\n\n{haystack}\n\n"
                     "Question: What is the special magic number mentioned in the document?\n"
                     "Answer: The special magic number is"},
    "ko": {"needle": "특별한 마법의 숫자는 {value}입니다.",
           "prompt": "아래는 긴 문서입니다. 문서를 읽고 뒤의 질문에 답하세요.\n\n{haystack}\n\n"
                     "질문: 문서에 언급된 특별한 마법의 숫자는 무엇입니까?\n답: 특별한 마법의 숫자는"},
}

_EN = {"subj": ["The old farmer", "A young engineer", "The committee", "My neighbour", "The river guide",
                "A quiet student", "The baker", "Our teacher"],
       "verb": ["repaired", "painted", "described", "carried", "studied", "measured", "cleaned", "visited"],
       "obj": ["the wooden bridge", "a small boat", "the village map", "an ancient clock", "the garden wall",
               "a box of letters", "the mountain trail", "the harbour lights"],
       "tail": ["before the rain began", "on a cold morning", "after lunch", "during the long summer",
                "while the town slept", "without saying a word", "for the third time", "at the end of the week"]}
_KO = {"subj": ["늙은 농부", "젊은 기술자", "위원회", "이웃집 할머니", "강 안내인", "조용한 학생", "빵집 주인", "우리 선생님"],
       "obj": ["나무 다리", "작은 배", "마을 지도", "오래된 시계", "정원 담장", "편지 상자", "산길", "항구의 불빛"],
       "verb": ["고쳤다", "칠했다", "설명했다", "옮겼다", "살펴보았다", "재었다", "닦았다", "찾아갔다"],
       "time": ["비가 오기 전에", "추운 아침에", "점심을 먹은 뒤", "긴 여름 동안", "마을이 잠든 사이", "말없이",
                "세 번째로", "주말이 끝날 무렵"]}


def _has_final(word: str) -> bool:
    ch = word[-1]
    return "가" <= ch <= "힣" and (ord(ch) - 0xAC00) % 28 != 0


def filler_sentences(lang: str, n: int, seed: int = 0) -> list[str]:
    rng = random.Random(f"{seed}-{lang}")
    out = []
    for _ in range(n):
        if lang == "ko":
            s, o = rng.choice(_KO["subj"]), rng.choice(_KO["obj"])
            out.append(f"{rng.choice(_KO['time'])} {s}{'은' if _has_final(s) else '는'} "
                       f"{o}{'을' if _has_final(o) else '를'} {rng.choice(_KO['verb'])}.")
        else:
            out.append(f"{rng.choice(_EN['subj'])} {rng.choice(_EN['verb'])} {rng.choice(_EN['obj'])} "
                       f"{rng.choice(_EN['tail'])}.")
    return out


def split_sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?。])\s+", " ".join(text.split())) if s]


def approx_tokens(text: str) -> int:
    return max(1, len(text.encode("utf-8")) // 4)


@dataclass
class NiahConfig:
    lang: str = "en"
    lengths: list[int] = field(default_factory=lambda: [1024, 2048, 4096, 8192, 16384, 32768])
    depths: list[float] = field(default_factory=lambda: [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
    max_length: int | None = None  # the model's context; longer lengths are an error
    haystack: str | None = None  # a text file; default: generated filler
    seed: int = 0

    def __post_init__(self) -> None:
        if self.lang not in NEEDLES:
            raise ValueError(f"niah lang {self.lang!r}: one of {sorted(NEEDLES)}")
        if any(not 0 <= d <= 100 for d in self.depths):
            raise ValueError(f"niah depths are percents in [0, 100], got {self.depths}")
        too_long = [n for n in self.lengths if self.max_length and n > self.max_length]
        if too_long:
            raise ValueError(f"niah lengths {too_long} exceed the model's max_length {self.max_length}")


def build_cases(cfg: NiahConfig, count_tokens: Callable[[str], int] = approx_tokens) -> list[dict]:
    """One case per (length, depth): the prompt (≤ length tokens), the needle value and where it went."""
    spec = NEEDLES[cfg.lang]
    if cfg.haystack:
        source = split_sentences(Path(cfg.haystack).read_text(encoding="utf-8"))
        if not source:
            raise ValueError(f"{cfg.haystack}: no text for a haystack")
    else:
        source = filler_sentences(cfg.lang, 512, cfg.seed)
    costs = [max(1, count_tokens(s + " ")) for s in source]
    cases = []
    for length in cfg.lengths:
        for depth in cfg.depths:
            value = str(random.Random(f"{cfg.seed}-{cfg.lang}-{length}-{depth}").randint(1_000_000, 9_999_999))
            needle = spec["needle"].format(value=value)
            budget = length - count_tokens(spec["prompt"].format(haystack="")) - count_tokens(needle) - 8
            if budget <= 0:
                raise ValueError(f"niah length {length} is too short for the prompt and needle")
            sents, used, i = [], 0, 0
            while used + costs[i % len(source)] <= budget:  # the source repeats until the budget is full
                sents.append(source[i % len(source)])
                used += costs[i % len(source)]
                i += 1
            # the needle goes at the sentence boundary nearest depth% of the haystack's tokens
            cum, at = 0, len(sents)
            for j, s in enumerate(sents):
                if cum >= used * depth / 100:
                    at = j
                    break
                cum += count_tokens(s + " ")
            haystack = " ".join(sents[:at] + [needle] + sents[at:])
            cases.append({"length": length, "depth": depth, "value": value, "needle_index": at,
                          "n_sentences": len(sents) + 1, "prompt": spec["prompt"].format(haystack=haystack)})
    return cases


def score(answer: str, value: str) -> float:
    return float(value in answer.replace(",", "").replace(" ", ""))


def cells_from_metrics(metrics: dict) -> dict[tuple[int, float], float]:
    """{(length, depth): accuracy} from a task's `acc@LENGTH@DEPTH` metrics (results.json)."""
    cells = {}
    for name, v in metrics.items():
        m = re.fullmatch(r"acc@(\d+)@([\d.]+)", name)
        if m:
            cells[(int(m.group(1)), float(m.group(2)))] = v["value"] if isinstance(v, dict) else v
    return cells


def plot_heatmap(cells: dict[tuple[int, float], float], path: str | Path, title: str = "Needle in a haystack") -> Path:
    """Accuracy by context length (x) and needle depth (y) as a PNG, the layout of Kamradt's plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({k[0] for k in cells})
    depths = sorted({k[1] for k in cells})
    grid = [[cells.get((n, d), float("nan")) for n in lengths] for d in depths]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.2 + 0.45 * len(depths)))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(lengths)), [f"{n // 1024}K" if n >= 1024 else str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title)
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if v == v:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label="accuracy")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str]) -> int:
    """Heat map from a results.json: `python -m kollm.eval.niah results.json --task niah_en --out niah.png`."""
    p = argparse.ArgumentParser(prog="kollm.eval.niah", description=main.__doc__)
    p.add_argument("results")
    p.add_argument("--task", default="niah_en")
    p.add_argument("--out", default="niah.png")
    a = p.parse_args(list(argv))
    if not Path(a.results).is_file():
        p.error(f"{a.results}: no such results.json (written by `kollm eval ... --out DIR`)")
    res = json.loads(Path(a.results).read_text(encoding="utf-8"))
    if a.task not in res.get("results", {}):
        p.error(f"{a.results}: no task {a.task!r} (has {sorted(res.get('results', {}))})")
    cells = cells_from_metrics(res["results"][a.task]["metrics"])
    print(plot_heatmap(cells, a.out, f"{a.task} ({res.get('model', '')})"))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
