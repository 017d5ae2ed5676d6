"""`kollm merge CONFIG.yaml --out DIR`: run a mergekit-style merge YAML (see kollm.merge.config)."""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kollm merge", description=__doc__)
    ap.add_argument("config", help="merge YAML (mergekit 0.1.5 syntax: models or slices, merge_method, parameters)")
    ap.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    ap.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (e.g. 5GB, 500MB)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    from kollm.merge.run import merge

    start = time.perf_counter()
    out = merge(args.config, args.out, max_shard_size=args.max_shard_size, progress=not args.quiet)
    print(f"merged into {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
