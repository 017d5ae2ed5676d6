"""`kollm merge CONFIG.yaml --out DIR [--set KEY.PATH=VALUE ...]`: run a mergekit-style merge YAML (see
kollm.merge.config). `--set` overrides a value of the YAML as training configs do, e.g.
`--set base_model=runs/x/sft/hf/latest --set slices.0.sources.1.model=runs/x/dpo/hf/latest`, so a
recipe can point a merge at its own stages' outputs. `--dry-run` prints the bytes it would read and
write (inputs not there yet sized by `--preset`). The merge itself (torch, safetensors) is imported
only when it runs, not for a dry run."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from kollm.argtypes import apply_overrides, config_text

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}


def _inputs(raw: dict) -> list[str]:
    """Every model directory the config names, once each (base_model, models, slices' sources)."""
    refs = [raw.get("base_model")] + [m.get("model") for m in raw.get("models") or [] if isinstance(m, dict)]
    for sl in raw.get("slices") or []:
        refs += [s.get("model") for s in (sl or {}).get("sources") or [] if isinstance(s, dict)]
    refs = [r.get("path") if isinstance(r, dict) else r for r in refs]
    return list(dict.fromkeys(str(r) for r in refs if r))


def dry_run(raw: dict, root: Path | None, args) -> dict:
    """The kollm.plan dict of a merge: bytes read (every input's weights, streamed once) and written
    (the merged weights in the output dtype). An input that is not there yet (an earlier recipe
    stage's output) is sized from --preset, in the config's dtype (bfloat16 when unset)."""
    from kollm.merge.io import Checkpoint
    from kollm.model.config import get_preset
    from kollm.plan import make

    dtype = raw.get("dtype") or "bfloat16"
    out_bytes = BYTES.get(raw.get("out_dtype") or dtype, 2)
    preset = get_preset(args.preset) if args.preset else None
    read, params, notes, uncounted = 0, None, [], []
    for ref in _inputs(raw):
        path = Path(ref)
        if not path.is_dir() and root is not None and (root / path).is_dir():
            path = root / path
        if (path / "config.json").is_file():
            ck = Checkpoint(path)
            read += sum(n for _, _, _, _, n in ck.info.values())
            n = sum(math.prod(shape) for _, shape, _, _, _ in ck.info.values())
            params = params or n
            notes.append(f"{ref}: {n:,} parameters on disk")
        elif preset is not None:
            read += preset.num_params() * BYTES.get(dtype, 2)
            params = params or preset.num_params()
            notes.append(f"{ref}: not there yet, sized as preset {args.preset}")
        else:
            notes.append(f"{ref}: not there yet and no --preset: its bytes are not counted")
            uncounted.append(ref)
    written = None if params is None else params * out_bytes
    return make("merge", argparse.Namespace(), [], notes=notes, bytes_read=read,
                bytes_written=written, inputs=len(_inputs(raw)), method=raw.get("merge_method"),
                inputs_missing=uncounted)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kollm merge", description=__doc__)
    ap.add_argument("config", help="merge YAML (mergekit 0.1.5 syntax: models or slices, merge_method, parameters)")
    ap.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    ap.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (e.g. 5GB, 500MB)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="override a value of the merge YAML (repeatable), e.g. models.0.model=DIR")
    ap.add_argument("--dry-run", action="store_true", help="print the bytes the merge reads and writes, and exit")
    ap.add_argument("--plan-json", action="store_true", help="dry run: print the plan as one JSON object")
    ap.add_argument("--preset", help="dry run: the shapes of inputs that are not there yet (e.g. llama3.1-8b)")
    args = ap.parse_args(argv)
    if args.dry_run:
        import yaml

        from kollm.plan import emit

        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such merge config")
        raw = apply_overrides(yaml.safe_load(config_text(path)) or {}, args.set)
        return emit(dry_run(raw, path.parent, args), args)
    from kollm.merge.run import merge

    config, root = args.config, None
    if args.set:
        import yaml

        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such merge config")
        raw = yaml.safe_load(config_text(path))
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a merge config is a YAML mapping")
        config, root = apply_overrides(raw, args.set), path.parent
    start = time.perf_counter()
    out = merge(config, args.out, max_shard_size=args.max_shard_size, progress=not args.quiet, root=root)
    print(f"merged into {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
