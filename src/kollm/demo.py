"""`kollm demo`: the tiny end-to-end run on the embedded bilingual corpus.

Writes the corpus and the post-training data (kollm.demo_corpus) into the work directory, then
runs the recipe `recipes/tiny-demo.yaml` with `kollm run`: curate → tokenizer → token shards →
pretraining with XLDA (sandwich norm + MTP, stable → anneal phases) → SFT → DPO → SLERP merge →
GRPO → evaluation with cross-lingual consistency → a chat reply → each post-training stage's effect
on held-out items (`kollm demo score`, kollm.demo_scores) → the report, whose path it prints, and
the effects table. Minutes on a 2-core CPU; re-running skips the stages already done.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kollm.demo_corpus import write_demo_corpus, write_demo_posttrain
from kollm.recipe import StageFailed, load_recipe, run_recipe

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny-demo.yaml"
TRAINING = ("pretrain", "sft", "dpo", "grpo")  # the stages --seed reaches (`seed:` of their configs)


def main(argv: list[str]) -> int:
    if argv[:1] == ["score"]:
        from kollm.demo_scores import main as score

        return score(argv[1:])
    p = argparse.ArgumentParser(prog="kollm demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/tiny-demo", help="where every stage writes (default: runs/tiny-demo)")
    p.add_argument("--force", action="store_true", help="re-run every stage")
    p.add_argument("--seed", type=int, default=0,
                   help="another draw of the demo: the corpus's documents, the post-training rows (seed + 1) and "
                        "every training stage's seed (default 0: the recipe as written)")
    args = p.parse_args(argv)
    if not RECIPE.exists():
        raise FileNotFoundError(f"{RECIPE} not found: `kollm demo` runs from a clone of the kollm repository")
    recipe = load_recipe(RECIPE)
    recipe.workdir = args.workdir
    if args.seed:
        for stage in recipe.stages:
            if stage.run in TRAINING:
                stage.args += ["--set", f"seed={args.seed}"]
    corpus = write_demo_corpus(Path(args.workdir) / "raw", seed=args.seed)
    post = write_demo_posttrain(Path(args.workdir) / "posttrain", seed=args.seed + 1)
    print(f"embedded corpus: {corpus}; post-training data: {post['chat'].parent}")
    try:
        run_recipe(recipe, force=args.force)
    except StageFailed as e:
        print(f"kollm demo: {e}", file=sys.stderr)
        return 1
    effects = Path(args.workdir) / "effects" / "effects.md"
    if effects.is_file():
        print("\nwhat each stage did, on held-out items (kollm.demo_scores):\n" + effects.read_text(encoding="utf-8"))
    print(f"\ndone: every stage's output is under {args.workdir}/ (run.json records each stage's command)")
    print(f"report: {Path(args.workdir) / 'report' / 'report.html'} (and report.md beside it)")
    return 0
