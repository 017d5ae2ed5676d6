"""`kollm distill CONFIG [--set KEY=VALUE] [--resume]`: knowledge distillation (DNA 1.0 §4.5,
DistiLLM: Ko et al. 2024, github jongwooko/distillm) on the one trainer.

The objective is kollm.train.objectives.distill (skew KL / skew reverse KL, forward / reverse KL,
optional cross-entropy). The data side and the command:

- `ChatExamples`: chat / prompt-completion rows (kollm.data.chat formats) rendered with the
  student's chat template; labels are the assistant tokens (plus each turn's end token), IGNORE
  elsewhere; bad rows are counted by reason with file:line and skipped.
- `DistillData`: the trainer's data source. Per micro-batch, with probability φ =
  `off_policy_prob` it trains on student-generated responses instead of the dataset's
  (DistiLLM's adaptive off-policy, its finetune.py): the student is validated before the first
  step and every `validation.every` steps; φ starts at `off_policy_init` and rises by
  `off_policy_step` when the student's cross-entropy on the dev responses (`val_ce`) is worse
  than the last accepted value by `off_policy_margin` (DistiLLM's loss_eps; the value is
  accepted only on a rise) — `off_policy_rule: kollm` is kollm's earlier rule instead: the
  objective's `val_loss` failing to improve on the previous validation by the margin. One draw r
  per micro-batch, as DistiLLM: r < φ·s or (r < φ while the replay buffer fills) generates anew,
  r < φ replays buffered samples, else the dataset's batch; the fresh share s is 1 − step/total
  (`replay_ratio: decreasing`, DistiLLM's default), step/total (increasing) or `fresh_prob`
  (constant). A generated response is labelled the way
  the dataset's are: labels aligned with the inputs, so the logits at the last prompt position
  are trained toward the first response token and the stop token is kept (DistiLLM's sampler is
  one position off here; docs/design.md). Its state (row order, RNG, schedule, buffer, the phase's length) is in
  every checkpoint, so a resumed run continues exactly.
- The teacher: a Hugging Face directory loaded here without gradients (bf16 on CUDA), checked to
  have the student's vocabulary; or its top-k log-probs stored by
  `kollm distill precompute CONFIG --out DIR` and named by `teacher.stored` (offline: no teacher
  in memory; only the dataset's responses have stored logits, so student generations need
  `teacher.server`: a vLLM server of the teacher whose `prompt_logprobs` give their top-k).

`--dry-run` (also after `precompute`) prints the compute plan from the config alone (kollm.plan):
the student's training and the teacher's forward pass, whose shapes come from its config.json or
`--teacher-preset`.

`kollm distill demo-data --corpus demo.jsonl --out DIR` turns the demo corpus into
prompt/completion rows (first sentence → the rest of the paragraph) for recipes/tiny-distill.yaml.

The stage's rooms: its sections in kollm.train.distill_config, its data (rows, stored or served
teacher top-k, the data source) in kollm.train.distill_data, the teacher and `precompute` in
kollm.train.distill_teacher, the dry run in kollm.train.distill_plan; `SPEC` below names them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kollm.data.chat import load_tokenizer, stop_token_ids
from kollm.model.hf import export_architecture
from kollm.plan import add_plan_args, emit
from kollm.train.distill_config import (
    DistillConfig,
    DistillSection,
    TeacherSection,
    distill_config,
    seq_len,
    student_tokenizer_path,
)
from kollm.train.distill_data import (
    ChatExamples,
    DistillData,
    ServerTopK,
    StoredTopK,
    ValidationData,
    demo_rows,
)
from kollm.train.distill_plan import dry_run
from kollm.train.distill_teacher import check_same_vocabulary, load_teacher, precompute
from kollm.train.export import export_final
from kollm.train.model_setup import model_config
from kollm.train.objectives.distill import DistillObjective
from kollm.train.parallel import distributed_run
from kollm.train.spec import StageSpec
from kollm.train.trainer import Trainer


def distill_objective(cfg: DistillConfig, teacher, vocab_size: int) -> DistillObjective:
    """`teacher`: the model in memory, or None when its top-k come with the batches (stored, served)."""
    d = cfg.distill
    return DistillObjective(teacher, d.loss, d.alpha, d.ce_weight, vocab_size)


SPEC = StageSpec("distill", config=distill_config, sections={"teacher": TeacherSection, "distill": DistillSection},
                 data=DistillData, objective=distill_objective)


def distill_config_from_dict(raw: dict) -> DistillConfig:
    return SPEC.from_dict(raw)


# -- the command -----------------------------------------------------------------------------------
def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="training config (YAML), e.g. recipes/tiny-distill.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value (YAML), e.g. --set teacher.model=DIR (repeatable)")
    add_plan_args(p, "print the compute plan (student training, teacher forward) and exit")
    p.add_argument("--teacher-preset", help="dry run: the teacher's shapes when teacher.model has no config.json "
                   "(e.g. llama3.1-405b)")
    return p


def main(argv: list[str]) -> int:
    if argv and argv[0] == "demo-data":
        p = argparse.ArgumentParser(prog="kollm distill demo-data")
        p.add_argument("--corpus", required=True, help="the demo corpus (kollm demo: WORKDIR/raw/demo.jsonl)")
        p.add_argument("--out", required=True)
        args = p.parse_args(argv[1:])
        for path in demo_rows(args.corpus, args.out):
            print(path)
        return 0
    if argv and argv[0] == "precompute":
        p = _parser("kollm distill precompute")
        p.add_argument("--out", required=True, help="directory for OUT/train and OUT/validation")
        args = p.parse_args(argv[1:])
        if args.dry_run:
            return emit(dry_run(SPEC.load(args.config, args.set), args, precompute_only=True), args)
        precompute(SPEC.load(args.config, args.set), args.out)
        return 0
    p = _parser("kollm distill")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--validate-only", action="store_true",
                   help="print the untrained student's validation metrics (the run's step-0 baseline) and exit")
    args = p.parse_args(argv)
    cfg = SPEC.load(args.config, args.set)
    if args.dry_run:
        return emit(dry_run(cfg, args), args)
    return train(cfg, args.resume, args.validate_only)


def train(cfg: DistillConfig, resume: bool = False, validate_only: bool = False) -> int:
    tc = cfg.train
    if not tc.data.train:
        raise ValueError("data.train is required (chat or prompt/completion rows)")
    if not (cfg.teacher.model or cfg.teacher.stored):
        raise ValueError("teacher.model (a Hugging Face directory) or teacher.stored (kollm distill precompute) "
                         "is required")
    if cfg.distill.off_policy and cfg.teacher.stored and not cfg.teacher.server:
        raise ValueError("distill.off_policy: student generations need the teacher online (teacher.stored holds "
                         "targets for the dataset's responses only): set teacher.server (a vLLM server of the "
                         "teacher) or distill.off_policy=false")
    if tc.checkpoint.export_hf:
        export_architecture(model_config(tc))
    tok_path = student_tokenizer_path(tc)
    tok = load_tokenizer(tok_path)
    L = seq_len(tc)
    train_ex = ChatExamples(tc.data.train, tok, L)
    val_ex = ChatExamples(tc.data.validation, tok, L) if tc.data.validation else None
    stored = val_stored = None
    if cfg.teacher.stored:
        stored = StoredTopK(Path(cfg.teacher.stored) / "train", tc.data.train, tok, L, len(train_ex.examples))
        if val_ex is not None:
            val_stored = StoredTopK(Path(cfg.teacher.stored) / "validation", tc.data.validation, tok, L,
                                    len(val_ex.examples))
    elif cfg.teacher.model:
        check_same_vocabulary(tok, load_tokenizer(cfg.teacher.model), tok_path, cfg.teacher.model)
    with distributed_run(tc.parallel) as info:
        if info.is_main:
            for ex in (train_ex, val_ex):
                if ex is not None:
                    print(f"kollm distill: {ex.report()}", file=sys.stderr)
        model = SPEC.model(tc, info.device)
        teacher = None if stored is not None else load_teacher(cfg.teacher.model, info.device, cfg.teacher.dtype)
        if teacher is not None and teacher.config.vocab_size != model.config.vocab_size:
            print(f"kollm distill: teacher has {teacher.config.vocab_size} embedding rows, the student "
                  f"{model.config.vocab_size}; the divergence runs over the tokenizer's {len(tok)} ids", file=sys.stderr)
        objective = SPEC.objective(cfg, teacher, len(tok))
        server = ServerTopK(cfg.teacher.server, cfg.teacher.top_k, cfg.teacher.server_model) \
            if cfg.teacher.server and stored is not None else None
        data = SPEC.data(train_ex, cfg, model, stop_token_ids(tok), stored, tc.seed, info.rank, info.world,
                         server)
        val_bs = tc.validation.batch_size or tc.phases[0].data.batch_size
        val = ValidationData(val_ex, val_bs, val_stored, info.rank, info.world) if val_ex is not None else None
        trainer = Trainer(tc, model, objective, data, info, val_data=val)
        if validate_only:
            if val is None:
                raise ValueError("--validate-only needs data.validation")
            metrics = trainer.validate()
            if info.is_main:
                print(json.dumps({"step": 0, **metrics}))
            return 0
        trainer.fit(resume=resume)  # a diverged run raises: `kollm` exits 3 with its message
        if (out := export_final(trainer, tc, tokenizer=tok_path)) is not None:
            print(f"kollm distill: Hugging Face export in {out}", file=sys.stderr)
    return 0


__all__ = ["SPEC", "distill_config_from_dict", "main", "train"]
