"""`kollm export --checkpoint DIR --out DIR`: a training checkpoint (DCP) or a Hugging Face
directory → a Hugging Face directory (kollm.model.hf.save_hf; transformers and vLLM load it).

DIR may be one checkpoint (`…/checkpoints/step-00001000`), a run's `checkpoints/` directory or the
run directory itself (the latest checkpoint is taken), or a Hugging Face model directory (re-export
in another dtype or shard size: kollm.model.export_cli). The model is rebuilt from the
configuration stored with the checkpoint, as it was last trained (a long-context phase's RoPE base
included), filled in one process whatever number of ranks wrote it; the MTP block is dropped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from kollm.model import export_cli
from kollm.model.config import ModelConfig
from kollm.model.hf import DTYPES, save_hf
from kollm.model.transformer import CausalLM, build_model
from kollm.train import checkpoint

_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def find_checkpoint(path: str | Path) -> Path:
    """A step directory from a step directory, a checkpoints/ directory or a run directory."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint")
    if (p / "trainer.json").is_file():
        return p
    for root in (p, p / "checkpoints"):
        last = checkpoint.latest(root)
        if last is not None:
            return last
    raise FileNotFoundError(f"{p}: no kollm checkpoint here (no trainer.json, no step-* directories)")


def load_checkpoint_model(path: str | Path) -> tuple[CausalLM, dict]:
    ckpt = find_checkpoint(path)
    state = json.loads((ckpt / "trainer.json").read_text())
    model = build_model(ModelConfig(**state["model_config"]))
    checkpoint.load_model_only(ckpt, model)
    return model.eval(), state


def link_latest(export: Path) -> None:
    """Point `hf/latest` at the newest export, atomically (a temp link renamed over the old one),
    so recipes and scripts can name the run's final model without knowing its step."""
    link = export.parent / "latest"
    tmp = export.parent / ".latest.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(export.name, target_is_directory=True)
    tmp.replace(link)


def export_final(trainer, cfg, tokenizer=None) -> Path | None:
    """End of a training run (rank 0, when `checkpoint.export_hf`): the last checkpoint as
    `OUTPUT_DIR/hf/step-N` with `OUTPUT_DIR/hf/latest` pointing at it; a resumed, already finished
    run exported it before and only relinks. Returns the export, None on other ranks."""
    if not (cfg.checkpoint.export_hf and trainer.info.is_main):
        return None
    out = trainer.run_dir / "hf" / trainer.last_checkpoint.name
    if not out.exists():
        export_checkpoint(trainer.last_checkpoint, out, dtype=DTYPES[cfg.checkpoint.export_dtype], tokenizer=tokenizer,
                          generation_config=start_generation_config(cfg))
    link_latest(out)
    return out


def start_generation_config(cfg) -> dict | None:
    """A fine-tuned chat model stops where the model it started from did (its end-of-turn token too)."""
    start = Path(cfg.model.init_from or "") / "generation_config.json"
    eos = json.loads(start.read_text()).get("eos_token_id") if cfg.model.init_from and start.is_file() else None
    return {"eos_token_id": eos} if eos is not None else None


def export_checkpoint(path: str | Path, out: str | Path, dtype: torch.dtype | None = None, tokenizer=None,
                      max_shard_size: str = "5GB", generation_config: dict | None = None) -> Path:
    model, state = load_checkpoint_model(path)
    tokenizer = tokenizer or state.get("tokenizer")
    return save_hf(model, out, tokenizer=tokenizer, dtype=dtype, max_shard_size=max_shard_size,
                   generation_config=generation_config)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kollm export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", "--model", dest="checkpoint", required=True,
                   help="kollm checkpoint (step dir, checkpoints/ or run dir) or Hugging Face directory")
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--dtype", choices=[*DTYPES, *_DTYPE_ALIASES], default=None,
                   help="weights dtype (default: the source's; fp32 for a training checkpoint)")
    p.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard, e.g. 5GB, 500MB")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory to copy (default: the run's)")
    args = p.parse_args(argv)
    src = Path(args.checkpoint)
    if (src / "config.json").is_file():  # a Hugging Face directory: the HF re-export path
        rest = ["--model", str(src), "--out", args.out, "--max-shard-size", args.max_shard_size]
        return export_cli.main(rest + (["--dtype", args.dtype] if args.dtype else []))
    dtype = DTYPES[_DTYPE_ALIASES.get(args.dtype, args.dtype)] if args.dtype else None
    out = export_checkpoint(src, args.out, dtype=dtype, tokenizer=args.tokenizer, max_shard_size=args.max_shard_size)
    print(f"exported {find_checkpoint(src)} to {out}")
    return 0


__all__ = ["export_checkpoint", "export_final", "link_latest", "load_checkpoint_model", "find_checkpoint", "main"]
