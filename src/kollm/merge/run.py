"""Run a merge: plan, stream every output tensor through its method, write an HF directory.

The output directory holds `model.safetensors` (or shards + index), `config.json` (the base's,
or the first model's, with the merged depth, dtype and vocabulary size), `generation_config.json`
and tokenizer files (chat template included) from the same donor (or the aligned tokenizer when
`tokenizer_source` is set), the merge YAML as `mergekit_config.yml` and a `README.md` model
card recording the lineage. It appears complete or not at all: everything is written to a temp
dir beside it and renamed into place (as `kollm.model.hf.save_hf` does).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml

from kollm.merge.config import MergeConfig, parse_config
from kollm.merge.io import Checkpoint, SafetensorsWriter
from kollm.merge.methods import METHODS
from kollm.merge.plan import HEAD, Planner, TensorPlan, is_vocab
from kollm.merge.vocab import Vocab, align, build_vocab
from kollm.model.hf import TOKENIZER_FILES, parse_size


@contextmanager
def _large_blocks_from_heap():
    """glibc serves blocks over 32 MB with fresh mmaps, so every large tensor costs a page fault
    per 4 KB (a third of a merge's CPU time on a VM). During the merge, keep them in the heap for
    reuse; afterwards restore glibc's initial thresholds and give the memory back."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: allocations below 1 GiB come from the heap
        libc.mallopt(-1, 1 << 31)  # M_TRIM_THRESHOLD: no eager return of freed heap to the OS
    except (OSError, AttributeError):  # not glibc (macOS, musl): merge as is
        yield
        return
    try:
        yield
    finally:
        libc.mallopt(-3, 128 * 1024)
        libc.mallopt(-1, 128 * 1024)
        libc.malloc_trim(0)


def _load(p: TensorPlan, ckpts: dict[str, Checkpoint]) -> list[torch.Tensor]:
    return [ckpts[m].get(n).to(p.load_dtype) if p.load_dtype is not None else ckpts[m].get(n) for m, n in p.inputs]


def _apply(method: str, p: TensorPlan, tensors: list[torch.Tensor]) -> torch.Tensor:
    return METHODS[method].fn(tensors, p.base_index, p.params)


def _write_finite(writer: SafetensorsWriter, name: str, t: torch.Tensor) -> None:
    """Write one merged tensor, refusing a non-finite one: a NaN weight, an infinite input or an
    overflow to the output dtype must fail the merge (nothing published), not ship a broken model.
    Runs on the writer thread, so the check overlaps the next tensor's arithmetic."""
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"merged tensor {name} has {bad} non-finite value(s) of {t.numel()} (NaN/inf in an input, "
                         "or the merge overflowed its dtype); nothing was written")
    writer.write(name, t)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _card(cfg: MergeConfig, ckpts: dict[str, Checkpoint], out_name: str, yaml_text: str, seconds: float) -> str:
    models = cfg.referenced_models()
    rows = []
    for m in models:
        c = ckpts[m].config
        rows.append(f"| `{m}` | {'base' if m == cfg.base_model else 'input'} | {(c.get('architectures') or ['?'])[0]} "
                    f"| {c.get('num_hidden_layers')} | {c.get('vocab_size')} | `{_sha256(ckpts[m].path / 'config.json')}` |")
    params = json.dumps({k: repr(v) for k, v in cfg.parameters.items()}) if cfg.parameters else "{}"
    meta = yaml.safe_dump({"library_name": "transformers", "tags": ["merge", "kollm", cfg.merge_method],
                           "base_model": models}, sort_keys=False).strip()
    return f"""---
{meta}
---
# {out_name}

A merge of {len(models)} models made with `kollm merge` (mergekit-compatible YAML; results agree with
mergekit 0.1.5 tensor by tensor) in {seconds:.1f} s.

## Method

`{cfg.merge_method}`{f" with base model `{cfg.base_model}`" if cfg.base_model else ""}; top-level parameters: {params};
dtype: {cfg.dtype or "inputs'"}{f", out_dtype: {cfg.out_dtype}" if cfg.out_dtype else ""};
tokenizer_source: {cfg.tokenizer_source or "none (vocabularies must match)"}.

## Lineage (inputs)

| model | role | architecture | layers | vocab | config.json sha256 |
|---|---|---|---|---|---|
{chr(10).join(rows)}

## Configuration (`mergekit_config.yml`)

```yaml
{yaml_text.rstrip()}
```
"""


def _chat_template_auto(models: list[str]) -> str | None:
    found = []
    for m in models:
        f = Path(m) / "chat_template.jinja"
        if f.is_file():
            found.append(f.read_text().strip())
            continue
        tc = Path(m) / "tokenizer_config.json"
        if tc.is_file():
            t = json.loads(tc.read_text()).get("chat_template")
            if isinstance(t, str) and t:
                found.append(t.strip())
    return Counter(found).most_common(1)[0][0] if found else None


def _write_tokenizer(cfg: MergeConfig, donor: Path, vocab: Vocab | None, tmp: Path) -> None:
    template = cfg.chat_template
    if template == "auto":
        template = _chat_template_auto(cfg.referenced_models())
    if vocab is None and template is None:
        for f in (*TOKENIZER_FILES, "generation_config.json"):  # a plain copy keeps every file byte for byte
            if (donor / f).is_file():
                shutil.copy2(donor / f, tmp / f)
        return
    if vocab is not None:
        tok = vocab.tokenizer
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(donor))
    if template is not None:
        tok.chat_template = template
    tok.save_pretrained(str(tmp))
    if (donor / "generation_config.json").is_file():
        shutil.copy2(donor / "generation_config.json", tmp / "generation_config.json")


def merge(config: dict | str | os.PathLike, out: str | os.PathLike, max_shard_size: int | str = "5GB",
          progress: bool = False, root: str | os.PathLike | None = None) -> Path:
    """Run the merge `config` (a mergekit YAML file or the same dict) into the new directory `out`;
    `root`: where relative model paths of a dict config are also looked for (a YAML file's own
    directory is used for a file)."""
    start = time.perf_counter()
    cfg = parse_config(config, root)
    yaml_text = (Path(config).read_text() if not isinstance(config, dict)
                 else yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: already exists and is not an empty directory")
    models = cfg.referenced_models()
    ckpts = {m: Checkpoint(m) for m in models}
    donor = cfg.base_model or models[0]
    vocab = None
    if cfg.tokenizer_source is not None:
        vocab = build_vocab(cfg.tokenizer_source, donor, models, {m: c.config for m, c in ckpts.items()})
    planner = Planner(cfg, ckpts, vocab.size if vocab else None)
    plans = planner.plan()
    method = cfg.merge_method

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        writer = SafetensorsWriter(tmp, [(p.out, p.shape, p.dtype) for p in plans], parse_size(max_shard_size))
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(plans), desc="merge", unit="tensor", file=sys.stderr)
        # One reader and one writer thread overlap disk I/O with arithmetic (pread and write release
        # the GIL); at most the next tensor's inputs and the previous result are in flight.
        with _large_blocks_from_heap(), ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writing:
            pending = reader.submit(_load, plans[0], ckpts) if plans else None
            written = None
            for i, p in enumerate(plans):
                tensors = pending.result()
                pending = reader.submit(_load, plans[i + 1], ckpts) if i + 1 < len(plans) else None
                if vocab is not None and is_vocab(p.out):
                    tensors = align(tensors, [m for m, _ in p.inputs], p.base, vocab)
                dtype = tensors[0].dtype
                for t in tensors[1:]:
                    dtype = torch.promote_types(dtype, t.dtype)
                result = _apply(method, p, [t.to(dtype) for t in tensors]).to(p.dtype)
                del tensors
                if written is not None:
                    written.result()
                written = writing.submit(_write_finite, writer, p.out, result)
                del result
                if bar is not None:
                    bar.update(1)
            if written is not None:
                written.result()
        writer.close()
        if bar is not None:
            bar.close()
        for c in ckpts.values():
            c.close()

        hf = dict(ckpts[donor].config)
        if not cfg.models_form:
            hf["num_hidden_layers"] = planner.n_layers
            if isinstance(hf.get("layer_types"), list):  # Qwen2 / Gemma 2 list one entry per layer
                hf["layer_types"] = [hf["layer_types"][0]] * planner.n_layers
        dtype_name = cfg.out_dtype or cfg.dtype
        if dtype_name:
            hf["dtype"] = hf["torch_dtype"] = dtype_name
        if vocab is not None:
            hf["vocab_size"] = vocab.size
        if any(p.out == HEAD for p in plans) and hf.get("tie_word_embeddings"):
            hf["tie_word_embeddings"] = False  # the merged head differs from the merged embeddings; keep it
        _write_tokenizer(cfg, Path(donor), vocab, tmp)
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        if not (tmp / "generation_config.json").is_file():
            gen = {k: hf[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf.get(k) is not None}
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        (tmp / "mergekit_config.yml").write_text(yaml_text)
        (tmp / "README.md").write_text(_card(cfg, ckpts, out.name, yaml_text, time.perf_counter() - start))
        os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only
        os.replace(tmp, out)  # atomic; replaces an empty directory too
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def soup(model_dirs: list[str | os.PathLike], out: str | os.PathLike, weights: list[float] | None = None,
         dtype: str | None = None, max_shard_size: int | str = "5GB") -> Path:
    """A model soup: the (uniform, unless `weights`) linear average of N HF directories into `out`.

    The same as `kollm merge` on `merge_method: linear` with `weight: 1.0` per model; the first
    directory donates config, tokenizer and generation config.
    """
    if len(model_dirs) < 2:
        raise ValueError(f"a soup needs at least two models, got {len(model_dirs)}")
    weights = list(weights) if weights is not None else [1.0] * len(model_dirs)
    if len(weights) != len(model_dirs):
        raise ValueError(f"{len(weights)} weights for {len(model_dirs)} models")
    config = {"merge_method": "linear",
              "models": [{"model": str(Path(d).resolve()), "parameters": {"weight": float(w)}}
                         for d, w in zip(model_dirs, weights)]}
    if dtype:
        config["dtype"] = dtype
    return merge(config, out, max_shard_size=max_shard_size)
