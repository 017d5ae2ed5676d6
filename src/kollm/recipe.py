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
everything upstream, the kollm version and the wall time. The fingerprint chains: a stage re-runs
when its own arguments change, when a file its arguments name outside the stages' outputs changed
(a config's or a data file's contents are hashed -- data kept in the workdir too; files over 16 MiB
-- corpora -- by size and modification time), or when any stage before it re-ran, so lineage is
exact without hashing outputs. While a stage runs, `{workdir}/.NAME.pending.json`
holds its fingerprint: an interrupted output of the same inputs is left for the stage to resume, one
of other inputs is removed first. docs/recipes.md has the format and the re-run rules.

A user's own data and models enter as named inputs, `vars:` (`{vars.NAME}` in arguments, set with
`kollm run RECIPE --set vars.NAME=VALUE`): before a stage runs, every path variable its arguments
name must exist, else the recipe stops there with a message naming the stage, the variable and how
to set it, after finishing (or skipping as up to date) every stage before it. `kollm run --dry-run`
runs nothing: per stage the command, whether it would run, its inputs, and its compute plan, which
the stage itself prints (`kollm STAGE ... --dry-run --plan-json`, kollm.plan), then the totals.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kollm import __version__
from kollm.argtypes import config_text


class StageFailed(RuntimeError):
    """A stage exited non-zero; its own error is already on stderr."""


class MissingInput(RuntimeError):
    """A stage's named input (a path variable) is not there: the recipe stops before the stage."""


@dataclass
class Var:
    """A named input: `value` (a path, relative to the working directory, unless `path: false`)."""

    value: str
    help: str = ""
    path: bool = True  # checked for existence before a stage that names it runs


@dataclass
class Stage:
    name: str
    run: str
    args: list[str] = field(default_factory=list)
    plan: dict = field(default_factory=dict)  # dry run only: extra flags, e.g. {world_size: 256, preset: P}


@dataclass
class Budget:
    """A report's compute for a group of stages, printed by the dry run beside the planned GPU-hours."""

    label: str
    stages: list[str]
    gpu_hours: float
    source: str = ""  # where the report gives it, e.g. "Trillion 7B Table 1"


@dataclass
class Recipe:
    workdir: str
    stages: list[Stage]
    dir: str = "."  # the recipe file's directory: `{recipe_dir}` in arguments
    vars: dict[str, Var] = field(default_factory=dict)
    path: str = ""  # the recipe file, for messages
    budgets: list[Budget] = field(default_factory=list)


VAR_REF = re.compile(r"\{vars\.([A-Za-z0-9_-]+)\}")


def _var(name: str, spec, where: str) -> Var:
    if isinstance(spec, dict):
        bad = set(spec) - {"value", "help", "path"}
        if bad or "value" not in spec:
            raise ValueError(f"{where}: vars.{name} is a value or a mapping with 'value' (and optional 'help', "
                             f"'path'); got keys {sorted(spec)}")
        return Var(str(spec["value"]), str(spec.get("help") or ""), bool(spec.get("path", True)))
    if spec is None or isinstance(spec, (list, dict)):
        raise ValueError(f"{where}: vars.{name} needs a value")
    return Var(str(spec))


def load_recipe(path: str | Path, sets: list[str] = ()) -> Recipe:
    """Read a recipe; `sets` are `vars.NAME=VALUE` / `workdir=VALUE` overrides (`kollm run --set`)."""
    path = Path(path)
    raw = yaml.safe_load(config_text(path))
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a recipe is a mapping with 'workdir' and 'stages'")
    unknown = set(raw) - {"workdir", "stages", "vars", "budgets"}
    if unknown:
        raise ValueError(f"{path}: unknown recipe key(s): {', '.join(sorted(unknown))}")
    if not isinstance(raw.get("vars") or {}, dict):
        raise ValueError(f"{path}: vars is a mapping NAME: VALUE")
    variables = {str(k): _var(str(k), v, str(path)) for k, v in (raw.get("vars") or {}).items()}
    stages = []
    for i, s in enumerate(raw.get("stages") or []):
        bad = set(s) - {"name", "run", "args", "plan"}
        if bad or "name" not in s or "run" not in s:
            raise ValueError(f"{path}: stages[{i}] needs 'name' and 'run' (and optional 'args', 'plan'); "
                             f"got keys {sorted(s)}")
        if not isinstance(s.get("plan") or {}, dict):
            raise ValueError(f"{path}: stages[{i}].plan is a mapping of dry-run flags, e.g. {{world_size: 8}}")
        stages.append(Stage(str(s["name"]), str(s["run"]), [str(a) for a in s.get("args") or []],
                            dict(s.get("plan") or {})))
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: stage names must be unique: {names}")
    budgets = []
    for i, b in enumerate(raw.get("budgets") or []):
        if not isinstance(b, dict) or set(b) - {"label", "stages", "gpu_hours", "source"} or \
                not {"label", "stages", "gpu_hours"} <= set(b):
            raise ValueError(f"{path}: budgets[{i}] needs 'label', 'stages' (names) and 'gpu_hours' (and optional "
                             f"'source'); got {b!r}")
        missing = [n for n in b["stages"] if n not in names]
        if missing:
            raise ValueError(f"{path}: budgets[{i}] names stage(s) {missing} that the recipe does not have")
        budgets.append(Budget(str(b["label"]), [str(n) for n in b["stages"]], float(b["gpu_hours"]),
                              str(b.get("source") or "")))
    recipe = Recipe(str(raw.get("workdir", "runs/" + path.stem)), stages, str(path.resolve().parent), variables,
                    str(path), budgets)
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--set {item!r}: expected vars.NAME=VALUE or workdir=VALUE")
        if key == "workdir":
            recipe.workdir = value
        elif key.startswith("vars.") and key[5:] in variables:
            variables[key[5:]].value = value
        elif key.startswith("vars."):
            raise KeyError(f"--set {item!r}: {path} has no variable {key[5:]!r} (its vars: "
                           f"{', '.join(variables) or 'none'})")
        else:
            raise ValueError(f"--set {item!r}: a recipe takes vars.NAME=VALUE or workdir=VALUE")
    for s in stages:
        for a in s.args:
            for name in VAR_REF.findall(a):
                if name not in variables:
                    raise ValueError(f"{path}: stage {s.name!r} names {{vars.{name}}}, which vars: does not define "
                                     f"(defined: {', '.join(variables) or 'none'})")
    return recipe


def _expand(arg: str, workdir: Path, out: Path, done: dict[str, Path], recipe_dir: str = ".",
            variables: dict[str, Var] | None = None) -> str:
    values = {"workdir": str(workdir), "out": str(out), "recipe_dir": recipe_dir} | {
        f"stages.{k}": str(v) for k, v in done.items()}
    # variables first: their values may hold {workdir} or {recipe_dir}
    def value(m: re.Match) -> str:
        v = (variables or {}).get(m.group(1))
        if v is None:
            return m.group(0)
        return os.path.expanduser(v.value) if v.path else v.value  # `--set vars.x=~/data` is not shell-expanded

    arg = VAR_REF.sub(value, arg)
    for key, value in values.items():
        arg = arg.replace("{" + key + "}", value)
    if "{" in arg and "}" in arg:
        raise ValueError(f"unresolved placeholder in recipe argument {arg!r} (known: {', '.join(values)}, vars.NAME)")
    return arg


def _var_path(var: Var, workdir: Path, recipe_dir: str) -> Path:
    return Path(var.value.replace("{workdir}", str(workdir)).replace("{recipe_dir}", recipe_dir)).expanduser()


def stage_inputs(recipe: Recipe, stage: Stage, workdir: Path) -> list[tuple[str, str, bool]]:
    """The named inputs a stage's arguments use: (variable, value, present) for path variables."""
    names = dict.fromkeys(n for a in stage.args for n in VAR_REF.findall(a))
    out = []
    for n in names:
        v = recipe.vars[n]
        if v.path:
            out.append((n, v.value, _var_path(v, workdir, recipe.dir).exists()))
    return out


def missing_message(recipe: Recipe, stage: Stage, missing: list[tuple[str, str, bool]]) -> str:
    lines = [f"stage {stage.name!r} needs input(s) that are not there:"]
    for n, value, _ in missing:
        h = recipe.vars[n].help
        lines.append(f"  vars.{n} = {value}: no such file or directory" + (f" ({h})" if h else ""))
    sets = " ".join(f"--set vars.{n}=PATH" for n, _, _ in missing)
    lines.append(f"set it with: kollm run {recipe.path or 'RECIPE'} {sets}   (or edit vars: in the recipe); the "
                 "stages before it are done and will be skipped as up to date")
    return "\n".join(lines)


HASHED_BYTES = 16 << 20  # larger input files (corpora) are fingerprinted by size and mtime, not read


def _input_files(argv: list[str], outputs: list[Path]) -> dict[str, str]:
    """Files named by the arguments (also as `--set key=PATH`) that lie outside every stage's output
    directory: their contents (or, for big ones, size and mtime) go into the fingerprint. Files in a
    stage's output are covered by the upstream chain; anything else -- data kept beside the stages in
    the workdir included -- is an input whose contents decide whether the stage is up to date."""
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
            if any(p.is_relative_to(o) for o in outputs):
                continue
            st = p.stat()
            digest = (hashlib.sha256(p.read_bytes()).hexdigest() if st.st_size <= HASHED_BYTES
                      else f"size={st.st_size},mtime_ns={st.st_mtime_ns}")
            found[str(p)] = digest
    return found


def _walk(recipe: Recipe):
    """(stage, argv, out, fingerprint, up to date) per stage, in order, fingerprints chained."""
    # Absolute, so the same directory spelled differently has the same fingerprint.
    workdir = Path(recipe.workdir).resolve()
    done: dict[str, Path] = {}
    upstream = hashlib.sha256(__version__.encode()).hexdigest()
    for stage in recipe.stages:
        out = workdir / stage.name
        argv = stage.run.split() + [_expand(a, workdir, out, done, recipe.dir, recipe.vars) for a in stage.args]
        inputs = _input_files(argv, [workdir / s.name for s in recipe.stages])
        fingerprint = hashlib.sha256(json.dumps([upstream, argv, inputs], sort_keys=True).encode()).hexdigest()
        record = out / "run.json"
        current = record.exists() and json.loads(record.read_text()).get("fingerprint") == fingerprint
        yield stage, argv, out, inputs, fingerprint, upstream, current
        upstream = fingerprint
        done[stage.name] = out


def run_recipe(recipe: Recipe, force: bool = False, log=print) -> list[tuple[str, str]]:
    """Run the stages in order; returns (name, "ran" | "skipped") per stage. Raises MissingInput
    before a stage whose named inputs are not there, StageFailed when a stage fails."""
    from kollm.cli import main as cli_main

    workdir = Path(recipe.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    outcome = []
    for stage, argv, out, inputs, fingerprint, upstream, current in _walk(recipe):
        record = out / "run.json"
        if not force and current:
            log(f"[{stage.name}] up to date, skipped")
            outcome.append((stage.name, "skipped"))
        else:
            missing = [i for i in stage_inputs(recipe, stage, workdir) if not i[2]]
            if missing:
                raise MissingInput(missing_message(recipe, stage, missing))
            pending = workdir / f".{stage.name}.pending.json"  # beside, not in, the output: stages want it empty
            if record.exists() or (out.exists() and pending.exists()
                                   and json.loads(pending.read_text()).get("fingerprint") != fingerprint):
                # A finished output of other inputs is stale: start the stage afresh. So is an interrupted
                # one of other inputs (resuming it would continue training on the old data); an interrupted
                # run of these inputs is left in place for stages that resume (pretrain --resume).
                shutil.rmtree(out)
            pending.write_text(json.dumps({"fingerprint": fingerprint, "argv": argv}))
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
            pending.unlink(missing_ok=True)
            outcome.append((stage.name, "ran"))
    return outcome


# -- dry run ---------------------------------------------------------------------------------------
# Stages that plan themselves (`--dry-run --plan-json`); COMPUTE ones also take the MFU flags.
COMPUTE = ("pretrain", "sft", "dpo", "grpo", "grpo filter", "distill", "distill precompute", "eval")
PLANNED = COMPUTE + ("merge", "data curate", "data tokenize", "tokenizer train")


def stage_plan(argv: list[str], flags: list[str]) -> dict:
    """Ask the stage for its plan (`--dry-run --plan-json`) in process; its output is captured."""
    from kollm.cli import main as cli_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli_main(argv + ["--dry-run", "--plan-json"] + flags)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 2
    lines = [ln for ln in out.getvalue().splitlines() if ln.startswith("{")]
    if rc != 0 or not lines:
        why = (err.getvalue().strip().splitlines() or out.getvalue().strip().splitlines() or [f"exit code {rc}"])[-1]
        return {"error": why}
    return json.loads(lines[-1])


def _flags(d: dict) -> list[str]:
    out = []
    for k, v in d.items():
        out += [f"--{str(k).replace('_', '-')}", str(v)]
    return out


def dry_run(recipe: Recipe, force: bool = False, defaults: dict | None = None) -> dict:
    """Every stage's command, status, inputs and plan, and the totals; runs nothing."""
    workdir = Path(recipe.workdir).resolve()
    stages, first_missing = [], None
    total = {"flops": 0.0, "gpu_hours": 0.0, "bytes_read": 0, "bytes_written": 0, "requests": 0}
    remaining = dict(total)  # the stages that would run
    would_run = False
    for stage, argv, _out, _, _, _, current in _walk(recipe):
        would_run = would_run or force or not current
        inputs = stage_inputs(recipe, stage, workdir)
        if first_missing is None and would_run and any(not p for _, _, p in inputs):
            first_missing = stage.name
        plan = None
        if stage.run in PLANNED:
            flags = _flags(defaults or {}) if stage.run in COMPUTE else []
            plan = stage_plan(argv, flags + _flags(stage.plan))
            for k in total:
                total[k] += plan.get(k) or 0
                remaining[k] += (plan.get(k) or 0) if would_run else 0
        stages.append({"name": stage.name, "argv": argv, "status": "would run" if would_run else "up to date",
                       "inputs": [{"var": n, "value": v, "present": p} for n, v, p in inputs], "plan": plan})
    budgets = []
    for b in recipe.budgets:  # the plan of a group of stages beside what the report spent on it
        plans = [s["plan"] for s in stages if s["name"] in b.stages]
        unplanned = [s["name"] for s in stages if s["name"] in b.stages and (not s["plan"] or "error" in s["plan"])]
        planned = sum((p or {}).get("gpu_hours") or 0 for p in plans)
        budgets.append({"label": b.label, "stages": b.stages, "planned_gpu_hours": planned,
                        "report_gpu_hours": b.gpu_hours, "ratio": planned / b.gpu_hours if b.gpu_hours else None,
                        "unplanned": unplanned, "source": b.source})
    return {"recipe": recipe.path, "workdir": str(workdir), "stages": stages, "total": total,
            "remaining": remaining, "stops_at": first_missing, "budgets": budgets}


def format_dry_run(d: dict, verbose: bool = False) -> str:
    from kollm.plan import human, human_bytes
    from kollm.train.memory import GB

    lines = [f"dry run of {d['recipe']} (workdir {d['workdir']}); nothing is run", ""]
    n = len(d["stages"])
    for i, s in enumerate(d["stages"], 1):
        lines.append(f"[{i}/{n}] {s['name']}: {s['status']}")
        lines.append(f"  kollm {shlex.join(s['argv'])}")
        for inp in s["inputs"]:
            lines.append(f"  input vars.{inp['var']} = {inp['value']}: {'present' if inp['present'] else 'MISSING'}")
        p = s["plan"]
        if p is None:
            lines.append("  plan: none (not a compute stage)")
        elif "error" in p:
            lines.append(f"  plan: could not be made: {p['error']}")
        else:
            if p["parts"]:
                lines.append(f"  plan: {p['flops']:.3e} FLOPs, {p['gpu_hours']:,.1f} GPU-hours on {p['world']} rank(s) "
                             f"at MFU {p['mfu']:.1%} (sampling {p['gen_mfu']:.1%}) of {p['peak_flops'] / 1e12:,.0f} "
                             "TFLOP/s")
                for part in p["parts"]:
                    lines.append(f"    {part['name']:<38}{part['kind']:<9}{human(part['tokens']):>8} tokens"
                                 f"{part['flops']:>12.3e} FLOPs{part['gpu_hours']:>11,.1f} GPU-h")
            if p.get("memory_per_rank") is not None:
                fits = "fits" if p["fits"] else "DOES NOT FIT"
                lines.append(f"  memory per rank {p['memory_per_rank'] / GB:,.1f} GB ({fits} in "
                             f"{p['device_memory'] / GB:.0f} GB)")
            io_ = [f"{lbl} {human_bytes(p[k])}" for k, lbl in (("bytes_read", "reads"), ("bytes_written", "writes"))
                   if p.get(k) is not None]
            if p.get("inputs_missing"):
                io_.append(f"(not counted: {', '.join(p['inputs_missing'])}, not there yet)")
            if p.get("requests"):
                io_.append(f"{p['requests']:,} requests")
            if p.get("tokens") and p["stage"] == "eval":
                io_.append(f"≈{human(p['tokens'])} tokens")
            if io_:
                lines.append("  " + ", ".join(io_))
            if verbose:
                lines += ["    " + ln for ln in p["text"].splitlines()]
        lines.append("")
    t = d["total"]
    lines.append(f"total: {t['flops']:.3e} FLOPs, {t['gpu_hours']:,.0f} GPU-hours; reads {human_bytes(t['bytes_read'])}, "
                 f"writes {human_bytes(t['bytes_written'])}; {t['requests']:,} eval/judge requests")
    r = d["remaining"]
    if r != t:
        lines.append(f"still to run: {r['flops']:.3e} FLOPs, {r['gpu_hours']:,.0f} GPU-hours (stages up to date "
                     "are in the total above)")
    for b in d.get("budgets", []):
        lines.append(f"{b['label']}: {b['planned_gpu_hours']:,.0f} GPU-hours planned ({', '.join(b['stages'])}) "
                     f"beside the report's {b['report_gpu_hours']:,.0f} H100-hours"
                     + (f" ({b['source']})" if b["source"] else "")
                     + (f": ×{b['ratio']:.2f}" if b["ratio"] is not None else "")
                     + (f"; not planned: {', '.join(b['unplanned'])}" if b["unplanned"] else ""))
    failed = [s["name"] for s in d["stages"] if s["plan"] and "error" in s["plan"]]
    if failed:
        lines.append(f"not planned (see above): {', '.join(failed)}")
    if d["stops_at"]:
        lines.append(f"a run would stop before stage {d['stops_at']!r}: a named input is missing (set it with "
                     "--set vars.NAME=PATH)")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    import argparse

    from kollm.plan import GEN_MFU
    from kollm.train.flops import H100_BF16_DENSE

    p = argparse.ArgumentParser(prog="kollm run", description="Run a YAML recipe, skipping stages already done.")
    p.add_argument("recipe")
    p.add_argument("--force", action="store_true", help="re-run every stage")
    p.add_argument("--workdir", help="override the recipe's workdir")
    p.add_argument("--set", action="append", default=[], metavar="vars.NAME=VALUE",
                   help="set a named input of the recipe (repeatable), e.g. --set vars.corpus=/data/raw")
    p.add_argument("--dry-run", action="store_true",
                   help="run nothing: per stage the command, whether it would run, its inputs and compute plan")
    p.add_argument("--json", action="store_true", help="dry run: print the plans as JSON")
    p.add_argument("--verbose", action="store_true", help="dry run: each stage's full plan too")
    p.add_argument("--mfu", type=float, default=0.4, help="dry run: model FLOPs utilisation (default 0.4)")
    p.add_argument("--gen-mfu", type=float, default=GEN_MFU, help=f"dry run: sampling utilisation ({GEN_MFU})")
    p.add_argument("--peak-flops", type=float, default=H100_BF16_DENSE, help="dry run: peak FLOP/s per GPU")
    p.add_argument("--device-memory", type=float, default=80e9, help="dry run: bytes per device (80e9)")
    args = p.parse_args(argv)
    recipe = load_recipe(args.recipe, args.set)
    if args.workdir:
        recipe.workdir = args.workdir
    if args.dry_run:
        d = dry_run(recipe, args.force, {"mfu": args.mfu, "gen_mfu": args.gen_mfu, "peak_flops": args.peak_flops,
                                         "device_memory": args.device_memory})
        print(json.dumps(d, indent=1) if args.json else format_dry_run(d, args.verbose))
        return 0
    try:
        run_recipe(recipe, force=args.force)
    except (StageFailed, MissingInput) as e:
        print(f"kollm run: {e}", file=sys.stderr)
        return 1
    return 0
