"""Named task suites: `--tasks trillion` expands to the Trillion 7B report's evaluation table
(Table 3: task, shots), `dna` to the DNA 1.0 report's (KMMLU, KoBEST, MMLU, GSM8K, BBH, MATH, KMMLU-Hard, BELEBELE,
CSAT-QA, MMLU-Pro),
`korean` to the Korean benchmarks, `quick` to a minutes-long smoke set. An entry is
`task` or `task:shots`. Tasks not installed (part of an optional module) are dropped with a note.
"""

from __future__ import annotations

KOBEST = ["kobest_boolq", "kobest_copa", "kobest_hellaswag", "kobest_sentineg", "kobest_wic"]

SUITES: dict[str, list[str]] = {
    "trillion": [
        "hellaswag:0", "truthfulqa_mc1:0", "truthfulqa_mc2:0", "arc_challenge:0", "haerae:3",
        *[f"{t}:5" for t in KOBEST], "bbh_cot:0", "xwinograd_en:0", "xwinograd_jp:0", "xwinograd_zh:0",
        "kmmlu:5", "mmlu:5", "global_mmlu_en:5", "global_mmlu_ko:5", "global_mmlu_ja:5", "global_mmlu_zh:5",
        "gpqa_main:4", "gsm8k_cot:0", "math_cot:0", "hrm8k_ko:0",
        "mbpp_cot", "humaneval_cot", "ifeval", "ko_ifeval", "mt_bench", "ko_mt_bench", "logickor",
    ],
    "dna": ["kmmlu:5", *[f"{t}:5" for t in KOBEST], "mmlu:5", "gsm8k:5", "bbh:0", "math:4",
            "kmmlu_hard:5", "belebele_ko:0", "csatqa:0", "mmlu_pro:5"],
    "korean": ["kmmlu:5", *[f"{t}:5" for t in KOBEST], "haerae:3", "global_mmlu_ko:5", "hrm8k_ko:0",
               "ko_ifeval", "ko_mt_bench", "logickor"],
    "quick": [*[f"{t}:0" for t in KOBEST], "mmlu:0", "gsm8k:0"],
}


def expand(spec: str, known: set[str], log=print) -> list[tuple[str, int | None]]:
    """`"trillion,gsm8k:3"` → [(task, shots or None), ...], suites expanded, unknown suite-only
    tasks dropped with a note; an unknown task named directly is an error."""
    out: list[tuple[str, int | None]] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        entries, from_suite = (SUITES[part], True) if part in SUITES else ([part], False)
        for e in entries:
            name, _, shots = e.partition(":")
            if name not in known:
                if from_suite:
                    log(f"suite {part}: task {name} is not installed here; skipped")
                    continue
                raise KeyError(f"unknown task or suite {name!r}; suites: {', '.join(SUITES)}")
            if shots and not (shots.isdigit() and shots.isascii()):
                raise ValueError(f"--tasks {e}: shots must be an integer >= 0, got {shots!r}")
            out.append((name, int(shots) if shots else None))
    return out


# Dry-run sizes of the suites' tasks when their data are not there: (items in the scored split,
# loglikelihood requests per item — the answer choices — or 0 for a generation task, turns per
# item). From the benchmarks' releases (the split lm-evaluation-harness scores); choices are the
# usual count (TruthfulQA's vary per item: mean rounded). `kollm eval --dry-run` counts the real
# items and requests instead when --data-dir holds the task.
SIZES: dict[str, tuple[int, int, int]] = {
    "hellaswag": (10042, 4, 1), "truthfulqa_mc1": (817, 5, 1), "truthfulqa_mc2": (817, 8, 1),
    "arc_challenge": (1172, 4, 1), "haerae": (1538, 5, 1), "kobest_boolq": (1404, 2, 1), "kobest_copa": (1000, 2, 1),
    "kobest_hellaswag": (500, 4, 1), "kobest_sentineg": (397, 2, 1), "kobest_wic": (1260, 2, 1),
    "bbh_cot": (6511, 0, 1), "bbh": (6511, 0, 1), "xwinograd_en": (2325, 2, 1), "xwinograd_jp": (959, 2, 1),
    "xwinograd_zh": (504, 2, 1), "kmmlu": (35030, 4, 1), "kmmlu_hard": (4104, 4, 1), "mmlu": (14042, 4, 1),
    "global_mmlu_en": (14042, 4, 1), "global_mmlu_ko": (14042, 4, 1), "global_mmlu_ja": (14042, 4, 1),
    "global_mmlu_zh": (14042, 4, 1), "gpqa_main": (448, 4, 1), "gsm8k": (1319, 0, 1), "gsm8k_cot": (1319, 0, 1),
    "math": (5000, 0, 1), "math_cot": (5000, 0, 1), "hrm8k_ko": (8011, 0, 1), "hrm8k_en": (8011, 0, 1),
    "mbpp_cot": (500, 0, 1), "humaneval_cot": (164, 0, 1), "ifeval": (541, 0, 1), "mt_bench": (80, 0, 2),
    "ko_mt_bench": (80, 0, 2), "logickor": (42, 0, 2), "belebele_ko": (900, 4, 1), "csatqa": (936, 5, 1),
    "mmlu_pro": (12032, 10, 1),
}
