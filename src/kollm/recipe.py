"""Recipes: a YAML list of stages run in order, each skipped when its output already exists
with the same inputs and config (`kollm run RECIPE`).

    workdir: runs/tiny-demo
    stages:
      - name: tokenizer
        run: tokenizer train                      # a kollm stage command
        args: ["--input", "{workdir}/raw", "--out", "{out}"]
      - name: shards
        run: data tokenize
        args: ["--input", "{workdir}/raw", "--tokenizer", "{stages.tokenizer}", "--out", "{out}"]

Each stage writes into `{workdir}/{name}` (`{out}`); `{stages.NAME}` is an earlier stage's output
and `{recipe_dir}` the recipe file's directory (for configs that sit beside it). After a stage
succeeds the runner writes `run.json` there: the stage, its arguments, the fingerprint of
everything upstream, the kollm version and the wall time. The fingerprint chains: a stage re-runs when its own arguments
change, when a file its arguments name outside the workdir changed (a config's contents are hashed;
files over 16 MiB — corpora — by size and modification time), or when any stage before it re-ran,
so lineage is exact without hashing outputs. docs/recipes.md has the format and the re-run rules.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kollm import __version__


class StageFailed(RuntimeError):
    """A stage exited non-zero; its own error is already on stderr."""


@dataclass
class Stage:
    name: str
    run: str
    args: list[str] = field(default_factory=list)


@dataclass
class Recipe:
    workdir: str
    stages: list[Stage]
    dir: str = "."  # the recipe file's directory: `{recipe_dir}` in arguments


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a recipe is a mapping with 'workdir' and 'stages'")
    unknown = set(raw) - {"workdir", "stages"}
    if unknown:
        raise ValueError(f"{path}: unknown recipe key(s): {', '.join(sorted(unknown))}")
    stages = []
    for i, s in enumerate(raw.get("stages") or []):
        bad = set(s) - {"name", "run", "args"}
        if bad or "name" not in s or "run" not in s:
            raise ValueError(f"{path}: stages[{i}] needs 'name' and 'run' (and optional 'args'); got keys {sorted(s)}")
        stages.append(Stage(str(s["name"]), str(s["run"]), [str(a) for a in s.get("args") or []]))
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: stage names must be unique: {names}")
    return Recipe(str(raw.get("workdir", "runs/" + path.stem)), stages, str(path.resolve().parent))


def _expand(arg: str, workdir: Path, out: Path, done: dict[str, Path], recipe_dir: str = ".") -> str:
    values = {"workdir": str(workdir), "out": str(out), "recipe_dir": recipe_dir} | {
        f"stages.{k}": str(v) for k, v in done.items()}
    for key, value in values.items():
        arg = arg.replace("{" + key + "}", value)
    if "{" in arg and "}" in arg:
        raise ValueError(f"unresolved placeholder in recipe argument {arg!r} (known: {', '.join(values)})")
    return arg


HASHED_BYTES = 16 << 20  # larger input files (corpora) are fingerprinted by size and mtime, not read


def _input_files(argv: list[str], workdir: Path) -> dict[str, str]:
    """Files named by the arguments (also as `--set key=PATH`) that lie outside the workdir: their
    contents (or, for big ones, size and mtime) go into the fingerprint. Files inside the workdir are
    earlier stages' outputs, already covered by the upstream chain."""
    found: dict[str, str] = {}
    for arg in argv:
        for cand in (arg, arg.partition("=")[2]):
            if not cand or len(cand) > 4096:
                continue
            p = Path(cand)
            try:
                if not p.is_file():
                    continue
                p = p.resolve()
            except OSError:
                continue
            if p.is_relative_to(workdir):
                continue
            st = p.stat()
            digest = (hashlib.sha256(p.read_bytes()).hexdigest() if st.st_size <= HASHED_BYTES
                      else f"size={st.st_size},mtime_ns={st.st_mtime_ns}")
            found[str(p)] = digest
    return found


def run_recipe(recipe: Recipe, force: bool = False, log=print) -> list[tuple[str, str]]:
    """Run the stages in order; returns (name, "ran" | "skipped") per stage."""
    from kollm.cli import main as cli_main

    # Absolute, so the same directory spelled differently has the same fingerprint.
    workdir = Path(recipe.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    done: dict[str, Path] = {}
    upstream = hashlib.sha256(__version__.encode()).hexdigest()
    outcome = []
    for stage in recipe.stages:
        out = workdir / stage.name
        argv = stage.run.split() + [_expand(a, workdir, out, done, recipe.dir) for a in stage.args]
        inputs = _input_files(argv, workdir)
        fingerprint = hashlib.sha256(json.dumps([upstream, argv, inputs], sort_keys=True).encode()).hexdigest()
        record = out / "run.json"
        if not force and record.exists() and json.loads(record.read_text()).get("fingerprint") == fingerprint:
            log(f"[{stage.name}] up to date, skipped")
            outcome.append((stage.name, "skipped"))
        else:
            if record.exists():
                # A finished output of other inputs is stale: start the stage afresh. An output without
                # run.json is an interrupted run, left in place for stages that resume (pretrain --resume).
                shutil.rmtree(out)
            log(f"[{stage.name}] kollm {shlex.join(argv)}")
            t0 = time.time()
            try:
                rc = cli_main(argv)
            except SystemExit as e:  # argparse rejects arguments by exiting
                rc = e.code if isinstance(e.code, int) else 2
            if rc != 0:
                raise StageFailed(f"recipe stage {stage.name!r} failed with exit code {rc}: kollm {shlex.join(argv)}")
            out.mkdir(parents=True, exist_ok=True)
            tmp = record.with_suffix(".tmp")
            tmp.write_text(json.dumps({
                "stage": stage.name, "run": stage.run, "argv": argv, "inputs": inputs, "fingerprint": fingerprint,
                "upstream": upstream, "kollm_version": __version__, "started": t0,
                "wall_time_s": round(time.time() - t0, 3),
            }, indent=2))
            tmp.replace(record)
            outcome.append((stage.name, "ran"))
        upstream = fingerprint
        done[stage.name] = out
    return outcome


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="kollm run", description="Run a YAML recipe, skipping stages already done.")
    p.add_argument("recipe")
    p.add_argument("--force", action="store_true", help="re-run every stage")
    p.add_argument("--workdir", help="override the recipe's workdir")
    args = p.parse_args(argv)
    recipe = load_recipe(args.recipe)
    if args.workdir:
        recipe.workdir = args.workdir
    try:
        run_recipe(recipe, force=args.force)
    except StageFailed as e:
        print(f"kollm run: {e}", file=sys.stderr)
        return 1
    return 0
