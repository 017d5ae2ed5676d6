"""`kollm dpo --online CONFIG`: online DPO (DNA 1.0 §4.4, after iterative/online DPO, Xu et al.
2023; Guo et al. 2024). Round r:

1. sample k responses per prompt from the current policy (kollm.data.samples.sample_round:
   kollm.model.generate, batched, seeded per batch) → `OUT/round-r/samples.jsonl`, appended batch by batch;
2. score them with the configured reward function or judge → `scores.jsonl`, appended in chunks;
3. chosen = best, rejected = worst per prompt (kollm.data.pairs; ties and length-ratio drops
   counted) → `pairs.jsonl`;
4. reference log-probs of the pairs from the round-0 policy (`model.init_from`), loaded only for
   this pass and freed before training, stored beside the pairs;
5. one DPO run of the one trainer (kollm.train.dpo.train_dpo) from the current policy into
   `round-r/train/`, whose export `round-r/train/hf/latest` is the next round's policy;
6. `round-r/done.json` with the counts.

After the last round `OUT/hf/latest` points at the final policy (`round-R/train/hf/latest`).

`--resume` continues where a run stopped: finished rounds are skipped, samples and scores resume
at the first missing batch (per-batch seeds make the continuation identical to an uninterrupted
run), training resumes from its latest checkpoint. Generation and scoring run on rank 0 while
the other ranks wait; reference passes and training use every rank.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from kollm.data.chat import load_tokenizer
from kollm.data.pairs import choose_pairs, make_scorer, read_prompts, score_all, write_jsonl
from kollm.data.samples import append_rows, complete_rows, sample_round
from kollm.model.hf import load_hf
from kollm.train.dpo import DPOSection, load_preference_data, model_fingerprint, reference_logps, train_dpo
from kollm.train.parallel import uses_autocast


def score_round(samples: list[dict], prompts: dict[str, dict], scorer, path: Path, chunk: int = 64) -> list[dict]:
    done = complete_rows(path)
    for i in range(len(done), len(samples), chunk):
        part = samples[i:i + chunk]
        scores = score_all([(prompts[s["id"]]["prompt"], s["response"], prompts[s["id"]]) for s in part], scorer)
        append_rows(path, [{**s, "score": sc} for s, sc in zip(part, scores)])
    return complete_rows(path)


def run_online(raw: dict, dpo: DPOSection, data_val: str | None, info, resume: bool = False,
               where: str = "config") -> Path:
    """All rounds; returns the final policy's Hugging Face directory."""
    on = dpo.online
    init = (raw.get("model") or {}).get("init_from")
    if not init:
        raise ValueError(f"{where}: model.init_from is required for online DPO (the round-0 policy and reference)")
    if not on.prompts or not Path(on.prompts).exists():
        raise FileNotFoundError(f"{where}: dpo.online.prompts: {on.prompts or '(unset)'}: no such prompts file")
    scorer = make_scorer(on.reward, None, on.judge, on.reward_model or None)
    if scorer is None:
        raise ValueError(f"{where}: dpo.online needs a reward (dotted path), a judge endpoint or a reward_model")
    out = Path(raw.get("output_dir", "runs/run"))
    if any(out.glob("round-*")) and not resume:
        raise ValueError(f"{out} holds rounds of an earlier run: pass --resume to continue it, or choose a new "
                         "output_dir")
    raw = copy.deepcopy(raw)
    raw["model"].setdefault("tokenizer", init)  # every round reads the round-0 tokenizer
    raw.setdefault("checkpoint", {})["export_hf"] = True  # the export is the next round's policy
    tokenizer = load_tokenizer(raw["model"]["tokenizer"])
    prompts, bad = read_prompts(on.prompts)
    if not prompts:
        raise ValueError(f"{on.prompts}: no usable prompts")
    ref_key = model_fingerprint(init, None)
    par = raw.get("parallel", {})
    autocast = uses_autocast(par.get("mixed_precision"), par.get("mode", "single"), info.device)
    seed = int(raw.get("seed", 0))
    policy = init
    for r in range(on.rounds):
        rd = out / f"round-{r}"
        if (rd / "done.json").is_file():
            policy = str(rd / "train" / "hf" / "latest")
            continue
        rd.mkdir(parents=True, exist_ok=True)
        ids = list(prompts)
        if on.prompts_per_round:  # a fresh subset each round, the same on resume
            g = torch.Generator().manual_seed(seed * 7919 + r)
            ids = [ids[i] for i in torch.randperm(len(ids), generator=g)[:on.prompts_per_round].tolist()]
        if info.is_main:
            samples = sample_round(policy, tokenizer, [(i, prompts[i]) for i in ids], on, seed * 1000 + r,
                                   rd / "samples.jsonl", info.device)
            scored = score_round(samples, prompts, scorer, rd / "scores.jsonl")
            responses: dict[str, list[dict]] = {}
            for s in scored:
                responses.setdefault(s["id"], []).append(s)
            pairs, counts = choose_pairs({i: prompts[i] for i in ids}, responses, on.max_length_ratio)
            if not pairs:
                raise ValueError(f"round {r}: no pairs (every prompt's samples tied or were dropped: {dict(counts)})")
            write_jsonl(rd / "pairs.jsonl", pairs)
            scores = [s["score"] for s in scored if s["score"] is not None]
            summary = {"round": r, "policy": str(policy), "prompts": len(ids), "samples": len(scored),
                       "mean_score": sum(scores) / max(1, len(scores)), **counts}
            if getattr(scorer, "failures", None) is not None:  # unparsable judgments, endpoint timeouts
                summary |= scorer.failures.report()
            (rd / "pairs.json").write_text(json.dumps(summary, indent=1))
            print(f"kollm dpo --online: round {r}: {json.dumps(summary)}", file=sys.stderr)
        if info.distributed:
            dist.barrier()
        # The reference is the round-0 policy: loaded for this pass only, then freed.
        ref = load_hf(init, device=info.device, dtype=torch.float32).eval()
        for path in [str(rd / "pairs.jsonl")] + ([data_val] if data_val else []):
            data = load_preference_data(path, tokenizer, dpo, info, seed=seed, shuffle=False)
            reference_logps(ref, data, path, ref_key, dpo.ref_batch, info, autocast, rd / "train")
        del ref
        round_raw = copy.deepcopy(raw)
        round_raw["seed"] = seed + r
        round_raw["name"] = f"{raw.get('name', 'dpo')}-round-{r}"
        trainer = train_dpo(round_raw, dpo, str(rd / "pairs.jsonl"), data_val, info,
                            resume=(rd / "train" / "checkpoints").is_dir(), run_dir=rd / "train", init_from=policy,
                            reference_key=ref_key, where=where)
        policy = str(rd / "train" / "hf" / "latest")
        if info.is_main:
            last = trainer.history[-1] if trainer.history else {}
            (rd / "done.json").write_text(json.dumps({"round": r, "policy": policy, "steps": trainer.step,
                                                      "last": last}, indent=1, default=str))
        if info.distributed:
            dist.barrier()
    if info.is_main and Path(policy).is_relative_to(out):  # OUT/hf/latest: the final policy, for recipes
        latest = out / "hf" / "latest"
        latest.parent.mkdir(parents=True, exist_ok=True)
        tmp = latest.with_name(".latest.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(Path("..") / Path(policy).relative_to(out), target_is_directory=True)
        tmp.replace(latest)
    return Path(policy)


__all__ = ["run_online", "score_round"]
