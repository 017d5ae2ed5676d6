"""`kollm merge CONFIG.yaml --out DIR [--set KEY.PATH=VALUE ...]`: run a mergekit-style merge YAML (see
kollm.merge.config). `--set` overrides a value of the YAML as training configs do, e.g.
`--set base_model=runs/x/sft/hf/latest --set slices.0.sources.1.model=runs/x/dpo/hf/latest`, so a
recipe can point a merge at its own stages' outputs."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kollm merge", description=__doc__)
    ap.add_argument("config", help="merge YAML (mergekit 0.1.5 syntax: models or slices, merge_method, parameters)")
    ap.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    ap.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (e.g. 5GB, 500MB)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="override a value of the merge YAML (repeatable), e.g. models.0.model=DIR")
    args = ap.parse_args(argv)
    from kollm.merge.run import merge

    config, root = args.config, None
    if args.set:
        import yaml

        from kollm.train.config import apply_overrides

        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such merge config")
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a merge config is a YAML mapping")
        config, root = apply_overrides(raw, args.set), path.parent
    start = time.perf_counter()
    out = merge(config, args.out, max_shard_size=args.max_shard_size, progress=not args.quiet, root=root)
    print(f"merged into {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
