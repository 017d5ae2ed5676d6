"""The XLDA ablation (issue 12): does cross-lingual document packing and attention move
English-only knowledge into Korean? Writes docs/xlda-ablation.md.

    python scripts/xlda_ablation.py recipes/xlda-ablation.yaml [--smoke] [--out FILE] [--workdir DIR]

1. A synthetic bilingual world (recipe `world`): entities with one value per relation; names,
   relation words and values are different tokens in English and Korean. Every entity has some
   relations stated in both languages (the model can learn that `ko_name_i` is `en_name_i`) and
   `heldout` relations stated only in English. Documents are one entity's facts in one language,
   in a fresh order each time; they become kollm token shards (`en/`, `ko/`).
2. For each condition (packing × mask) and seed, the recipe's `train` config is trained from
   scratch by kollm's own trainer (`kollm.train.trainer.Trainer`, the one loop) on those shards:
   same model, steps and tokens; only `packing`/`rho` and `mask_policy` differ.
3. Recall: for every fact, the rank of the correct value among the relation's candidates by the
   model's log-likelihood of the value token after the prompt (English `NAME 's REL is`, Korean
   `NAME 의 REL 는`). Reported: Korean and English recall@1 on the held-out (English-only) facts,
   P(ko✓ | en✓) (the report's E(T)→K(T), eq. 3), Korean recall on shared facts (did Korean get
   learnt at all), the mean reciprocal rank, and each condition minus the baseline; 95 % intervals
   from a bootstrap that resamples seeds and facts.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


# -- the world ---------------------------------------------------------------------------------------

@dataclass
class World:
    vocab: list[str]  # token id -> word
    value: np.ndarray  # (entities, relations) -> value index
    heldout: np.ndarray  # (entities, relations) bool: stated only in English
    en_docs: list[list[int]]
    ko_docs: list[list[int]]

    def tok(self, word: str) -> int:
        return self._ids[word]

    def __post_init__(self) -> None:
        self._ids = {w: i for i, w in enumerate(self.vocab)}


def build_world(entities: int, relations: int, values: int, heldout: int, docs_per_entity: int, seed: int) -> World:
    if not 0 <= heldout < relations:
        raise ValueError(f"world.heldout must lie in [0, relations - 1], got {heldout} of {relations}")
    rng = np.random.default_rng(seed)
    vocab = ["<pad>", "<eos>", ".", "'s", "is", "의", "는", "이다"]
    vocab += [f"en:E{i}" for i in range(entities)] + [f"ko:E{i}" for i in range(entities)]
    vocab += [f"en:R{r}" for r in range(relations)] + [f"ko:R{r}" for r in range(relations)]
    vocab += [f"en:V{r}.{v}" for r in range(relations) for v in range(values)]
    vocab += [f"ko:V{r}.{v}" for r in range(relations) for v in range(values)]
    value = rng.integers(0, values, (entities, relations))
    held = np.zeros((entities, relations), bool)
    for e in range(entities):
        held[e, rng.choice(relations, heldout, replace=False)] = True
    w = World(vocab, value, held, [], [])
    eos = w.tok("<eos>")
    for e in range(entities):
        for _ in range(docs_per_entity):
            doc = []
            for r in rng.permutation(relations):
                doc += en_prompt(w, e, r) + [w.tok(f"en:V{r}.{value[e, r]}"), w.tok(".")]
            w.en_docs.append(doc + [eos])
            doc = []
            for r in rng.permutation(np.flatnonzero(~held[e])):
                doc += ko_prompt(w, e, r) + [w.tok(f"ko:V{r}.{value[e, r]}"), w.tok("이다"), w.tok(".")]
            w.ko_docs.append(doc + [eos])
    return w


def en_prompt(w: World, e: int, r: int) -> list[int]:
    return [w.tok(f"en:E{e}"), w.tok("'s"), w.tok(f"en:R{r}"), w.tok("is")]


def ko_prompt(w: World, e: int, r: int) -> list[int]:
    return [w.tok(f"ko:E{e}"), w.tok("의"), w.tok(f"ko:R{r}"), w.tok("는")]


def write_shards(w: World, root: Path) -> None:
    from kollm.data.shards import ShardWriter, is_complete

    for lang, docs in (("en", w.en_docs), ("ko", w.ko_docs)):
        part = root / lang / "part-00000"
        if is_complete(part):
            continue
        with ShardWriter(part, lang, "xlda-ablation") as sw:
            for d in docs:
                sw.add(np.asarray(d, np.uint32))


# -- training (kollm's trainer) and recall -------------------------------------------------------------

def train_config(recipe: dict, cond: dict, seed: int, steps: int | None, shards: Path, vocab: int):
    from kollm.train.config import config_from_dict

    raw = copy.deepcopy(recipe["train"])
    raw["seed"] = seed
    raw.setdefault("model", {}).setdefault("overrides", {})["vocab_size"] = vocab
    raw["data"] = {**raw.get("data", {}), "shards": str(shards), "mask_policy": cond["mask"]}
    for ph in raw["phases"]:
        ph["data"] = {**ph.get("data", {}), "packing": cond["packing"], "rho": cond["rho"]}
        if steps is not None:
            ph["steps"] = steps
    return config_from_dict(raw)


def train_one(recipe: dict, cond: dict, seed: int, steps: int | None, shards: Path, run_dir: Path, vocab: int):
    from kollm.data.loader import PretrainLoader
    from kollm.train.model_setup import build_run_model
    from kollm.train.objectives.lm import LMObjective
    from kollm.train.trainer import Trainer

    cfg = train_config(recipe, cond, seed, steps, shards, vocab)
    model = build_run_model(cfg, torch.device("cpu"))
    data = PretrainLoader(cfg.data.shards, cfg.phases[0].data, seed=cfg.seed, block_size=cfg.data.block_size)
    trainer = Trainer(cfg, model, LMObjective(cfg.data.mask_policy), data, run_dir=run_dir)
    history = trainer.fit()
    return trainer.model, history


def finished(run_dir: Path, steps: int):
    """(model, metrics) of a run that already reached its last step (the script re-run after an
    interruption scores it again from its final checkpoint), else (None, None)."""
    import json

    from kollm.train.export import load_checkpoint_model

    final = run_dir / "checkpoints" / f"step-{steps:08d}"
    if not final.is_dir() or not (run_dir / "metrics.jsonl").is_file():
        return None, None
    model, _ = load_checkpoint_model(final)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    return model, rows


@torch.no_grad()
def ranks(model, w: World, lang: str, facts: np.ndarray, after_english: str | None = None) -> np.ndarray:
    """Rank (1 = best) of the correct value among the relation's values, per (entity, relation) fact.
    `after_english` (a mask policy): the prompt follows an unrelated English document (the next
    entity's) packed as in training, language ids en = 0, ko = 1, attention under that policy."""
    model.eval()
    prompt = en_prompt if lang == "en" else ko_prompt
    rows = [prompt(w, e, r) for e, r in facts]
    if after_english is None:
        logits = model(torch.tensor(rows)).logits[:, -1].float()
    else:
        ctx = [w.en_docs[((e + 1) % len(w.value)) * (len(w.en_docs) // len(w.value))] for e, _ in facts]
        ids = torch.tensor([c + r for c, r in zip(ctx, rows)])
        doc = torch.tensor([[0] * len(c) + [1] * len(r) for c, r in zip(ctx, rows)])
        lang_ids = torch.tensor([[0] * len(c) + [int(lang == "ko")] * len(r) for c, r in zip(ctx, rows)])
        logits = model(ids, doc_ids=doc, lang_ids=lang_ids, mask_policy=after_english).logits[:, -1].float()
    n_values = int(w.value.max()) + 1
    out = np.empty(len(facts), np.int64)
    for i, (e, r) in enumerate(facts):
        cand = logits[i, [w.tok(f"{lang}:V{r}.{v}") for v in range(n_values)]]
        out[i] = 1 + int((cand > cand[w.value[e, r]]).sum())
    return out


# -- statistics -----------------------------------------------------------------------------------------

def bootstrap(stats, arrays: dict[str, np.ndarray], iters: int, seed: int = 0) -> dict[str, tuple[float, float]]:
    """95 % percentile intervals of `stats(arrays) -> {name: value}`, resampling seeds (axis 0) and
    facts (axis 1) with replacement, the same draw for every array (so differences are paired)."""
    rng = np.random.default_rng(seed)
    S, F = next(iter(arrays.values())).shape
    draws: dict[str, list[float]] = {}
    for _ in range(iters):
        si, fi = rng.integers(0, S, S), rng.integers(0, F, F)
        for k, v in stats({n: a[si][:, fi] for n, a in arrays.items()}).items():
            draws.setdefault(k, []).append(v)
    return {k: (float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))) for k, v in draws.items()}


def cond_stats(a: dict[str, np.ndarray]) -> dict[str, float]:
    en, ko = a["en_held"] == 1, a["ko_held"] == 1
    out = {"ko_held": ko.mean(), "en_held": en.mean(),
           "ko_given_en": (ko & en).sum() / en.sum() if en.any() else float("nan"),
           "ko_mrr": (1.0 / a["ko_held"]).mean()}
    return out | {k: (a[k] == 1).mean() for k in ("ko_shared", "ko_held_ctx", "ko_shared_ctx", "en_shared") if k in a}


def fmt(v: float, ci: tuple[float, float]) -> str:
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


# -- the run ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs="?", default=str(ROOT / "recipes" / "xlda-ablation.yaml"))
    p.add_argument("--smoke", action="store_true", help="the recipe's `smoke` sizes (seconds)")
    p.add_argument("--out", default=None, help="report file (default docs/xlda-ablation.md; smoke: WORKDIR/report.md)")
    p.add_argument("--workdir", default="runs/xlda-ablation", help="shards and runs go here")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = yaml.safe_load(Path(args.recipe).read_text(encoding="utf-8"))
    world_cfg, seeds, steps, iters = dict(recipe["world"]), recipe["seeds"], None, recipe.get("bootstrap", 2000)
    if args.smoke:
        sm = recipe["smoke"]
        world_cfg.update(sm.get("world", {}))
        seeds, steps, iters = sm.get("seeds", seeds), sm.get("steps"), sm.get("bootstrap", iters)
    work = Path(args.workdir) / ("smoke" if args.smoke else "full")
    out = Path(args.out) if args.out else (work / "report.md" if args.smoke else ROOT / "docs" / "xlda-ablation.md")

    w = build_world(**world_cfg)
    shards = work / "shards"
    write_shards(w, shards)
    held = np.argwhere(w.heldout)
    shared = np.argwhere(~w.heldout)
    conds = recipe["conditions"]
    res: dict[str, dict[str, np.ndarray]] = {}  # (seeds, held-out facts) arrays, bootstrapped together
    shared_res: dict[str, dict[str, np.ndarray]] = {}  # (seeds, shared facts)
    losses: dict[str, list[float]] = {}
    train_s = 0.0
    for cond in conds:
        rows = {k: [] for k in ("en_held", "ko_held", "ko_shared", "en_shared", "ko_held_ctx", "ko_shared_ctx")}
        for seed in seeds:
            t0 = time.time()
            run_dir = work / "runs" / cond["name"].replace(" ", "").replace("+", "_") / f"seed{seed}"
            model, hist = finished(run_dir, steps or recipe["train"]["phases"][0]["steps"])
            if model is not None and len(hist) > 1:  # reused: its training time from the logged clock
                per_step = (hist[-1]["time"] - hist[0]["time"]) / (hist[-1]["step"] - hist[0]["step"])
                train_s += per_step * hist[-1]["step"]
            if model is None:
                if run_dir.exists():
                    import shutil

                    shutil.rmtree(run_dir)  # an unfinished run starts again from scratch
                model, hist = train_one(recipe, cond, seed, steps, shards, run_dir, len(w.vocab))
                train_s += time.time() - t0
            rows["en_held"].append(ranks(model, w, "en", held))
            rows["ko_held"].append(ranks(model, w, "ko", held))
            rows["ko_shared"].append(ranks(model, w, "ko", shared))
            rows["en_shared"].append(ranks(model, w, "en", shared))
            rows["ko_held_ctx"].append(ranks(model, w, "ko", held, after_english=cond["mask"]))
            rows["ko_shared_ctx"].append(ranks(model, w, "ko", shared, after_english=cond["mask"]))
            losses.setdefault(cond["name"], []).append(float(hist[-1]["loss"]))  # the last step's
            print(f"{cond['name']} seed {seed}: ko held {np.mean(rows['ko_held'][-1] == 1):.3f}, en held "
                  f"{np.mean(rows['en_held'][-1] == 1):.3f}, ko shared {np.mean(rows['ko_shared'][-1] == 1):.3f}, "
                  f"loss {losses[cond['name']][-1]:.3f} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        res[cond["name"]] = {k: np.stack(v) for k, v in rows.items() if k not in ("en_shared", "ko_shared_ctx")}
        shared_res[cond["name"]] = {k: np.stack(rows[k]) for k in ("en_shared", "ko_shared_ctx")}
    minutes = train_s / 60

    report = render(recipe, args, world_cfg, seeds, steps, iters, conds, res, shared_res, losses, held, shared, minutes)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, encoding="utf-8")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def render(recipe, args, world_cfg, seeds, steps, iters, conds, res, shared_res, losses, held, shared, minutes) -> str:
    base = conds[0]["name"]
    n_values = world_cfg["values"]
    train = recipe["train"]
    ph = train["phases"][0]
    steps = steps or ph["steps"]
    recipe_path = Path(args.recipe).resolve()
    shown = recipe_path.relative_to(ROOT) if recipe_path.is_relative_to(ROOT) else recipe_path
    cmd = f"python scripts/xlda_ablation.py {shown}" + (" --smoke" if args.smoke else "")
    lines = [
        "# XLDA ablation: does it move English-only knowledge into Korean?", "",
        f"Command: `PYTHONPATH=src {cmd}` (training {minutes:.0f} min in all on a shared, loaded 2-core CPU, "
        f"{args.threads} thread; re-running scores finished runs from their checkpoints). "
        "Written by `scripts/xlda_ablation.py`; the numbers below are whatever the run produced.", "",
        "## Set-up", "",
        f"- World: {world_cfg['entities']} entities × {world_cfg['relations']} relations, {n_values} candidate values "
        f"per relation (chance recall {1 / n_values:.3f}); names, relation words and values are different tokens "
        f"in English and Korean. Per entity {world_cfg['relations'] - world_cfg['heldout']} relations are stated in "
        f"both languages and {world_cfg['heldout']} only in English: {len(shared)} shared facts, {len(held)} "
        f"held-out (English-only) facts; {world_cfg['docs_per_entity']} documents per entity and language.",
        f"- Model: kollm preset `{train['model']['preset']}` with {train['model'].get('overrides', {})}, trained from "
        f"scratch by kollm's trainer: {steps} steps × {train['batch']['tokens']} tokens, seq_len {ph['data']['seq_len']}, "
        f"lr {train['optimizer']['lr']}, WSD; language shares = corpus sizes (alpha 1).",
        f"- Seeds: {list(seeds)} (model init and data order); the world is fixed (seed {world_cfg['seed']}).",
        "- Recall@1: the correct value ranks first among the relation's candidates by the model's log-likelihood "
        "after the prompt (English `NAME 's REL is`, Korean `NAME 의 REL 는`). P(ko✓|en✓) is the report's "
        "E(T)→K(T) (eq. 3) over held-out facts.",
        f"- 95 % intervals: bootstrap over seeds and facts ({iters} resamples); differences are paired "
        "(same resampled seeds and facts).", "",
        "| condition | packing (ρ) | mask | Korean recall, held-out | English recall, held-out | P(ko✓∣en✓) | "
        "Korean MRR, held-out | Korean recall, shared | loss at the last step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in conds:
        a = res[c["name"]]
        st, ci = cond_stats(a), bootstrap(cond_stats, a, iters)
        lines.append(f"| {c['name']} | {c['packing']} ({c['rho']}) | `{c['mask']}` | {fmt(st['ko_held'], ci['ko_held'])} | "
                     f"{fmt(st['en_held'], ci['en_held'])} | {fmt(st['ko_given_en'], ci['ko_given_en'])} | "
                     f"{fmt(st['ko_mrr'], ci['ko_mrr'])} | {fmt(st['ko_shared'], ci['ko_shared'])} | "
                     f"{np.mean(losses[c['name']]):.3f} |")
    lines += ["", "Diagnostic: the same probes after an unrelated English document (the next entity's), packed "
              "and masked as in training (under `document` the mask hides it, so the numbers equal the plain ones):",
              "", "| condition | English recall, shared | Korean recall, shared, after an English document | "
              "Korean recall, held-out, after an English document |", "|---|---|---|---|"]
    for c in conds:
        sh = shared_res[c["name"]]
        st = {k: (v == 1).mean() for k, v in sh.items()}
        ci = bootstrap(lambda x: {k: (v == 1).mean() for k, v in x.items()}, sh, iters)
        hx = res[c["name"]]["ko_held_ctx"]
        ci_h = bootstrap(lambda x: {"h": (x["h"] == 1).mean()}, {"h": hx}, iters)["h"]
        lines.append(f"| {c['name']} | {fmt(st['en_shared'], ci['en_shared'])} | "
                     f"{fmt(st['ko_shared_ctx'], ci['ko_shared_ctx'])} | {fmt((hx == 1).mean(), ci_h)} |")
    lines += ["", f"Difference from the baseline ({base}), paired bootstrap:", "",
              "| condition | Δ Korean recall, held-out | Δ English recall, held-out | Δ P(ko✓∣en✓) |", "|---|---|---|---|"]
    verdicts = []
    for c in conds[1:]:
        def diff(a):
            x = cond_stats({k[2:]: v for k, v in a.items() if k.startswith("c_")})
            y = cond_stats({k[2:]: v for k, v in a.items() if k.startswith("b_")})
            return {k: x[k] - y[k] for k in ("ko_held", "en_held", "ko_given_en")}
        arrays = {f"c_{k}": v for k, v in res[c["name"]].items()} | {f"b_{k}": v for k, v in res[base].items()}
        d, ci = diff(arrays), bootstrap(diff, arrays, iters)
        lines.append(f"| {c['name']} | {fmt(d['ko_held'], ci['ko_held'])} | {fmt(d['en_held'], ci['en_held'])} | "
                     f"{fmt(d['ko_given_en'], ci['ko_given_en'])} |")
        lo, hi = ci["ko_held"]
        verdicts.append(f"{c['name']}: Korean recall of English-only facts "
                        + ("higher than" if lo > 0 else "lower than" if hi < 0 else "not distinguishable from")
                        + f" the baseline (Δ {d['ko_held']:+.3f}, 95 % CI [{lo:+.3f}, {hi:+.3f}])")
    lines += ["", "Per seed (Korean / English recall on held-out facts):", "",
              "| condition | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for c in conds:
        a = res[c["name"]]
        lines.append(f"| {c['name']} | " + " | ".join(
            f"{np.mean(a['ko_held'][i] == 1):.3f} / {np.mean(a['en_held'][i] == 1):.3f}" for i in range(len(seeds))) + " |")
    chance = 1 / n_values
    above = [c["name"] for c in conds if bootstrap(cond_stats, res[c["name"]], iters)["ko_held"][0] > chance]
    verdicts.append("Korean recall of English-only facts is above chance (the 95 % interval's lower end above "
                    f"{chance:.3f}) in: " + (", ".join(above) if above else "no condition"))
    b = cond_stats(res[base])
    for c in conds[1:]:
        x = cond_stats(res[c["name"]])
        verdicts.append(f"{c['name']}: facts learnt in the language they were stated in — Korean recall on shared "
                        f"facts {x['ko_shared']:.3f} (baseline {b['ko_shared']:.3f}), English recall on held-out facts "
                        f"{x['en_held']:.3f} (baseline {b['en_held']:.3f})")
    lines += ["", "## Reading", "", *[f"- {v}." for v in verdicts],
              f"- Chance is {1 / n_values:.3f}. Korean recall on the shared facts says whether the model learnt "
              "Korean at all; English recall on the held-out facts whether it learnt the facts to be transferred.",
              "- This is a toy: a model of a few hundred thousand parameters, a templated world and random document "
              "adjacency (as XLDA packs: an English document next to an unrelated Korean one). It tests the "
              "mechanism's claim at this scale only; it says nothing about a 7B model on natural text.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
