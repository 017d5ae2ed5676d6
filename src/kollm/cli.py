"""The one entry point: `kollm STAGE ...`. Each stage lives in its own module with its own
argument parser and a `main(argv) -> int`; this file only lists them and dispatches, so that
`kollm --help` starts fast and one stage's imports never slow another."""

from __future__ import annotations

import importlib
import sys

# stage -> (module with main(argv), one-line help); module None = not built yet.
STAGES: dict[str, tuple[str | None, str]] = {
    "demo": ("kollm.demo", "the tiny end-to-end demo on embedded data (the README's first command)"),
    "run": ("kollm.recipe", "run a YAML recipe: stages in order, skip-if-done, lineage in run.json"),
    "data": ("kollm.data.cli", "corpus work: curate, judge, classifier, tokenize"),
    "tokenizer": ("kollm.tokenizer.cli", "tokenizer train / extend / stats"),
    "model": ("kollm.model.cli", "model info PRESET: parameters, FLOPs per token, memory"),
    "pretrain": ("kollm.train.pretrain", "pretraining / continual pretraining with XLDA packing"),
    "sft": ("kollm.train.sft", "supervised fine-tuning on chat data (loss on responses only)"),
    "merge": ("kollm.merge.cli", "linear / soup, SLERP, task arithmetic, TIES merges (mergekit YAML), streamed"),
    "dpo": ("kollm.train.dpo_cli", "offline and online DPO; `dpo pairs` builds pairs from scored responses"),
    "distill": ("kollm.train.distill", "skew-KL distillation with adaptive off-policy replay"),
    "grpo": ("kollm.train.grpo_cli", "RL with verifiable rewards (GRPO)"),
    "eval": ("kollm.eval.cli", "benchmarks, Korean IFEval, cross-lingual consistency, LLM-as-judge"),
    "generate": ("kollm.model.generate", "generate text from a checkpoint (KV cache; greedy or sampling)"),
    "export": ("kollm.train.export", "export a training checkpoint (DCP) or a Hugging Face directory to Hugging Face format"),
    "serve": ("kollm.serve.cli", "OpenAI-compatible HTTP server (continuous batching)"),
    "report": ("kollm.report", "HTML/Markdown report of a run: lineage, curation, tokenizer, curves, evaluation"),
}


def usage() -> str:
    width = max(map(len, STAGES))
    lines = ["usage: kollm STAGE [ARGS...]   (kollm STAGE --help for a stage's options)", "", "stages:"]
    for name, (module, help_) in STAGES.items():
        lines.append(f"  {name:<{width}}  {help_}" + ("" if module else "  [not built yet]"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from kollm import __version__

        print(f"kollm {__version__}")
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        print(f"kollm: unknown stage {stage!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, _ = STAGES[stage]
    if module is None:
        print(f"kollm {stage}: not built yet", file=sys.stderr)
        return 2
    try:
        return int(importlib.import_module(module).main(rest) or 0)
    except KeyboardInterrupt:
        # Ctrl-C where no handler of the stage's own was listening (loading, before the training
        # loop; the trainer's handler checkpoints and exits 130 itself): the shell's status, no traceback
        print(f"\nkollm {stage}: stopped by SIGINT", file=sys.stderr)
        return 128 + 2
    except (KeyError, ValueError, FileNotFoundError, NotADirectoryError) as e:
        # User errors get one line naming the cause, not a traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"kollm {stage}: error: {msg}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        from kollm.train.trainer import TrainingDiverged  # torch is loaded by now: the import is free

        if not isinstance(e, TrainingDiverged):
            raise
        # a NaN/inf loss or update: the message names the step and the last good checkpoint
        print(f"kollm {stage}: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
