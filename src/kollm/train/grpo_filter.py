"""`kollm grpo filter CONFIG --out FILE`: RLVR prompts of the right difficulty (Trillion 7B §4:
"using problems with appropriate difficulty levels ... crucial"; the levels are not published).

Each prompt of `data.train` gets G completions from the initial policy (`model.init_from`, in
process, or `grpo.server`), sampled as the run will sample them (the config's temperature, top-p,
top-k, max_new_tokens, chat template and system prompt), scored by the run's rewards. A completion
passes when its reward is ≥ `--pass-reward` (1.0: the math reward of a correct answer). A prompt
is kept when its pass rate lies strictly between `--low` and `--high` (0 and 1; kollm.rl.difficulty
measures and keeps): a group that all pass or all fail has zero advantage everywhere and gives GRPO
no gradient. FILE gets the kept rows (as the run reads them), FILE.rates.jsonl every prompt's pass
rate; nothing kept is an error with the counts, not an empty file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from kollm.data.chat import load_tokenizer, stop_token_ids
from kollm.jsonrows import count_jsonl_rows
from kollm.model.generate import GenerationConfig
from kollm.model.hf import load_hf
from kollm.plan import add_plan_args, emit, make, part, world_of
from kollm.rl.difficulty import keep, pass_rates
from kollm.rl.rewards import Rewards
from kollm.rl.rollout import LocalRollout, ServerRollout
from kollm.train.grpo import load_grpo_config
from kollm.train.grpo_data import PromptSet, reward_fields
from kollm.train.model_setup import plan_model_config


def run(cfg, out: str | Path, low: float = 0.0, high: float = 1.0, group_size: int | None = None,
        pass_reward: float = 1.0, engine=None) -> tuple[int, int]:
    """The filter over a GRPO config; returns (kept, prompts). Raises ValueError when none is kept.
    `engine`: a sampler to use instead of the config's policy (tests)."""
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"kollm grpo filter: bounds must satisfy 0 <= low < high <= 1, got {low}, {high}")
    tc, g = cfg.train, cfg.grpo
    G = group_size or g.group_size
    tok_dir = tc.model.tokenizer or tc.model.init_from
    tokenizer = load_tokenizer(tok_dir)
    rewards = Rewards(g.rewards)
    prompts = PromptSet(cfg.data.train, tokenizer, cfg.data, reward_fields(g.rewards))
    if prompts.errors.total:
        print(f"kollm grpo filter: {cfg.data.train}: {prompts.summary()}", file=sys.stderr)
    gen = GenerationConfig(max_new_tokens=g.max_new_tokens, do_sample=True, temperature=g.temperature, top_p=g.top_p,
                           top_k=g.top_k, stop_token_ids=sorted(set(stop_token_ids(tokenizer, tc.model.init_from))))
    if engine is None and g.server:
        engine = ServerRollout(g.server, tokenizer, gen, g.server_model)
    elif engine is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        engine = LocalRollout(load_hf(tc.model.init_from, device=device).eval(), gen)

    def progress(done: int, n: int) -> None:
        print(f"kollm grpo filter: {done}/{n} prompts × {G} samples", file=sys.stderr)

    counts = pass_rates(engine, tokenizer, prompts, rewards, G, pass_reward, tc.seed, progress=progress)
    kept = keep(counts, low, high)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rates = out.with_name(out.name + ".rates.jsonl")
    with open(rates, "w", encoding="utf-8") as f:
        chosen = set(kept)
        for i, (k, m) in enumerate(counts):
            f.write(json.dumps({"index": i, "passes": k, "scored": m, "pass_rate": k / m if m else None,
                                "kept": i in chosen}, ensure_ascii=False) + "\n")
    all_pass = sum(1 for k, m in counts if m and k == m)
    none_pass = sum(1 for k, m in counts if m and k == 0)
    summary = (f"{len(kept)} of {len(counts)} prompts have a pass rate in ({low}, {high}) over {G} samples "
               f"({all_pass} all pass, {none_pass} none pass); rates in {rates}")
    if not kept:
        raise ValueError(f"kollm grpo filter: {summary}; nothing kept, {out} not written")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(prompts.rows[i], ensure_ascii=False) + "\n" for i in kept), encoding="utf-8")
    tmp.replace(out)
    print(f"kollm grpo filter: {summary}; kept rows in {out}", file=sys.stderr)
    return len(kept), len(counts)


def dry_run(cfg, args, group_size: int | None = None) -> dict:
    """The kollm.plan dict: G samples of every prompt at ≤ max_prompt_len + max_new_tokens tokens
    (an upper bound), prompts counted in data.train or taken from data.planned_prompts."""

    tc, g = cfg.train, cfg.grpo
    mc, notes = plan_model_config(tc)
    G, T = group_size or g.group_size, cfg.seq_len
    n = count_jsonl_rows(cfg.data.train)
    if n is None:
        n = cfg.data.planned_prompts
        notes.append(f"{cfg.data.train or 'data.train'} is not there: planned with data.planned_prompts {n:,}")
    parts = [dict(part(f"samples ({n:,} prompts × {G})", "generate", n * G * T, mc.flops_per_token(T), T),
                  rollouts=n * G)] if n else []
    notes.append(f"{n:,} prompts × G={G} at ≤ {T} tokens; " + (f"by the server {g.server}" if g.server else "in process"))
    return make("grpo filter", args, parts, notes=notes, params=mc.num_params())


def main(argv: list[str]) -> int:

    p = argparse.ArgumentParser(prog="kollm grpo filter", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="the GRPO config whose data.train, policy, sampling and rewards are used")
    p.add_argument("--out", help="kept rows (JSONL); pass rates go to OUT.rates.jsonl (required unless --dry-run)")
    p.add_argument("--low", type=float, default=0.0, help="keep pass rates > LOW (default 0)")
    p.add_argument("--high", type=float, default=1.0, help="keep pass rates < HIGH (default 1)")
    p.add_argument("--group-size", type=int, help="samples per prompt (default grpo.group_size)")
    p.add_argument("--pass-reward", type=float, default=1.0, help="a completion passes at reward >= this")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a config value")
    add_plan_args(p, "print the compute plan (the samples) and exit")
    args = p.parse_args(argv)
    if args.dry_run:
        return emit(dry_run(load_grpo_config(args.config, args.set, world=world_of(args)), args, args.group_size), args)
    if not args.out:
        p.error("--out is required")
    run(load_grpo_config(args.config, args.set), args.out, args.low, args.high, args.group_size, args.pass_reward)
    return 0


__all__ = ["dry_run", "main", "run"]
