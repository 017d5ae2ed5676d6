"""`kollm export`: write a checkpoint as a Hugging Face directory (kollm.model.hf.save_hf).

Source today: a Hugging Face checkpoint directory (re-export in another dtype or shard size);
the tensors are loaded straight into the target dtype, so memory is one copy of the model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kollm.model.hf import DTYPES, TOKENIZER_FILES, load_hf, save_hf

_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kollm export", description=__doc__)
    p.add_argument("--model", required=True, help="source: Hugging Face checkpoint directory")
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--dtype", choices=[*DTYPES, *_DTYPE_ALIASES], default=None,
                   help="weights dtype (default: the source's)")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard, e.g. 5GB, 500MB")
    args = p.parse_args(argv)
    src = Path(args.model)
    dtype = DTYPES[_DTYPE_ALIASES.get(args.dtype, args.dtype)] if args.dtype else None
    model = load_hf(src, dtype=dtype)
    gen_file = src / "generation_config.json"
    gen = json.loads(gen_file.read_text()) if gen_file.is_file() else None
    has_tokenizer = any((src / f).is_file() for f in TOKENIZER_FILES)
    out = save_hf(model, args.out, tokenizer=src if has_tokenizer else None, max_shard_size=args.max_shard_size,
                  generation_config=gen)
    n = sum(p.numel() for p in model.parameters())
    print(f"exported {n:,} parameters ({next(model.parameters()).dtype}) to {out}")
    return 0
