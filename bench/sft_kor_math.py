"""SFT on ../shared/data/post-train/kor-math from a tiny pretrained model: validation loss and
greedy accuracy on 50 held-out problems (the last number of the answer == the gold answer),
before and after `kollm sft` (BENCHMARKS.md, ## SFT).

Chat rows, question → worked answer: AddSub, MultiArith and SingleEq in English (`question` →
`reasoning_completion`) and Korean (`kor_question` → `kor_answer`), and the Korean MWP problems
whose model-written `reason` ends in the gold answer (the others are wrong answers: a verifier
filter in the spirit of the report's judge filter). Problems are held out by source row, so the
translation of an evaluation problem is never trained on.

    python bench/sft_kor_math.py --model runs/tiny-demo/pretrain/hf/latest --work runs/sft-kor-math
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "post-train" / "kor-math"
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny-sft.yaml"
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def last_number(text: str) -> float | None:
    found = NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def correct(answer: str, gold: str) -> bool:
    got, want = last_number(answer), last_number(gold)
    return got is not None and want is not None and abs(got - want) < 1e-6


def build_rows(data: Path, n_eval: int, n_val: int, seed: int = 0) -> dict[str, list[dict]]:
    """train / validation chat rows and eval problems {lang, question, gold}."""
    bilingual = []
    for name in ("addsub", "multiarith", "single_eq"):
        for line in (data / f"kor-{name}-train.jsonl").read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            bilingual.append(r)
    random.Random(seed).shuffle(bilingual)
    n_eval_src = n_eval // 2
    eval_src, val_src, train_src = (bilingual[:n_eval_src], bilingual[n_eval_src:n_eval_src + n_val // 2],
                                    bilingual[n_eval_src + n_val // 2:])

    def chats(rows):
        out = []
        for r in rows:
            out.append({"messages": [{"role": "user", "content": r["question"].strip()},
                                     {"role": "assistant", "content": r["reasoning_completion"].strip()}]})
            out.append({"messages": [{"role": "user", "content": r["kor_question"].strip()},
                                     {"role": "assistant", "content": r["kor_answer"].strip()}]})
        return out

    train, mwp_wrong = chats(train_src), 0
    for line in (data / "kor-mwp-train.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if correct(r["reason"], r["answer"]):
            train.append({"messages": [{"role": "user", "content": r["question"].strip()},
                                       {"role": "assistant", "content": r["reason"].strip()}]})
        else:
            mwp_wrong += 1
    random.Random(seed + 1).shuffle(train)
    problems = []
    for r in eval_src:
        problems.append({"lang": "en", "question": r["question"].strip(), "gold": r["answer"]})
        problems.append({"lang": "ko", "question": r["kor_question"].strip(), "gold": r["answer"]})
    return {"train": train, "validation": chats(val_src), "eval": problems[:n_eval], "mwp_wrong": mwp_wrong}


def evaluate(model_dir: Path, problems: list[dict], max_new_tokens: int) -> dict:
    from kollm.data import chat
    from kollm.model.generate import GenerationConfig, generate
    from kollm.model.hf import load_hf

    tok = chat.load_tokenizer(model_dir)
    model = load_hf(model_dir).eval()
    prompts = [chat.render_prompt(tok, [{"role": "user", "content": p["question"]}]) for p in problems]
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, stop_token_ids=chat.stop_token_ids(tok))
    with torch.no_grad():
        outs = generate(model, prompts, cfg)
    answers = [tok.decode(ids, skip_special_tokens=True) for ids in outs]
    hits = [correct(a, p["gold"]) for a, p in zip(answers, problems)]
    by_lang = {lang: sum(h for h, p in zip(hits, problems) if p["lang"] == lang) for lang in ("en", "ko")}
    return {"correct": sum(hits), "of": len(problems), "by_lang": by_lang,
            "examples": [{"q": p["question"][:80], "gold": p["gold"], "answer": a[:160]}
                         for p, a in list(zip(problems, answers))[:4]]}


def validation_loss(model_dir: Path, val_path: Path, seq_len: int) -> float:
    """The SFT objective on the validation rows, as the trainer's validation computes it."""
    from kollm.data import chat
    from kollm.data.sft import SFTValidation
    from kollm.model.hf import load_hf
    from kollm.train.objectives.sft import SFTObjective

    tok = chat.load_tokenizer(model_dir)
    model = load_hf(model_dir).eval()
    batches = list(SFTValidation(str(val_path), tok, seq_len, 8).batches())
    obj = SFTObjective()
    totals = sum(obj.targets(b) for b in batches)
    with torch.no_grad():
        return float(sum(obj(model, b, totals).loss for b in batches))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="pretrained Hugging Face directory (the demo's export)")
    p.add_argument("--work", default="runs/sft-kor-math")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--eval", type=int, default=50)
    p.add_argument("--val", type=int, default=100)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--set", action="append", default=[], help="extra `kollm sft --set` overrides")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = build_rows(Path(args.data), args.eval, args.val)
    for split in ("train", "validation"):
        with open(work / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[split])
    print(f"rows: train {len(rows['train'])} (MWP with a wrong model answer dropped: {rows['mwp_wrong']}), "
          f"validation {len(rows['validation'])}, eval problems {len(rows['eval'])}", flush=True)

    import yaml

    seq_len = yaml.safe_load(RECIPE.read_text())["phases"][0]["data"]["seq_len"]
    before = {"val_loss": validation_loss(Path(args.model), work / "validation.jsonl", seq_len),
              **evaluate(Path(args.model), rows["eval"], args.max_new_tokens)}
    print("before:", json.dumps(before, ensure_ascii=False), flush=True)
    t0 = time.time()
    cmd = [sys.executable, "-m", "kollm.cli", "sft", str(RECIPE), "--set", f"model.init_from={args.model}",
           "--set", f"data.train={work / 'train.jsonl'}", "--set", f"data.validation={work / 'validation.jsonl'}",
           "--set", f"output_dir={work / 'run'}", "--set", "logging.progress=false", "--resume"]
    for s in args.set:
        cmd += ["--set", s]
    subprocess.run(cmd, check=True)
    minutes = (time.time() - t0) / 60
    metrics = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    after = {"val_loss": [(m["step"], round(m["val_loss"], 4)) for m in metrics if "val_loss" in m],
             **evaluate(work / "run" / "hf" / "latest", rows["eval"], args.max_new_tokens)}
    print("after:", json.dumps(after, ensure_ascii=False), flush=True)
    result = {"before": before, "after": after, "train_minutes": round(minutes, 1), "steps": len(metrics),
              "train_loss_first_last": [metrics[0]["loss"], metrics[-1]["loss"]]}
    (work / "result.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(json.dumps({k: v for k, v in result.items() if k not in ("before", "after")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
