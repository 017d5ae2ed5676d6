"""Merge config + input headers → one `TensorPlan` per output tensor (mergekit's `plan.py`).

Merging is by tensor name over Hugging Face checkpoints, so Llama, Qwen2 (q/k/v biases) and
kollm's sandwich-norm exports (Gemma 2 names: pre/post_feedforward_layernorm) plan alike:
- layer tensors `model.layers.{i}.*`: output layer j of a slice comes from layer
  `layer_range[0] + k` of every source (k = j's offset in the slice), with relative depth
  t = k / (n − 1) (1 when n = 1) for gradients — per slice, as mergekit does;
- every other tensor (embeddings, final norm, lm_head) is planned with t = 0: the embeddings
  with the first slice's sources, the rest with the last slice's.
`lm_head.weight` is optional: merged only when some input has it, and an input with tied
embeddings contributes its `model.embed_tokens.weight` instead (mergekit's `tied_names`).
Parameters resolve per tensor from the narrowest scope out (config.resolve): per-input ones on
that input's tensor name, shared ones on the output name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from kollm.merge.config import MergeConfig, Slice, resolve
from kollm.merge.io import Checkpoint
from kollm.merge.methods import METHODS

LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


def is_vocab(name: str) -> bool:
    return name in (EMBED, HEAD)


@dataclass
class TensorPlan:
    out: str
    inputs: list[tuple[str, str]]  # (model dir, tensor name) in the slice's source order
    base_index: int | None
    params: dict  # shared values; per-input ones as lists over inputs (non-base ones over non-base inputs)
    shape: tuple[int, ...]
    dtype: torch.dtype  # output dtype
    load_dtype: torch.dtype | None  # `dtype:` of the config (inputs are cast on load)
    t: float = 0.0
    base: str | None = None  # the slice's base model (vocabulary alignment prefers its rows)


def num_layers(ck: Checkpoint) -> int:
    n = ck.config.get("num_hidden_layers")
    if not isinstance(n, int):
        idx = {int(m.group(1)) for name in ck.info if (m := LAYER.match(name))}
        n = max(idx) + 1 if idx else 0
    return n


def _layer_suffixes(ck: Checkpoint, i: int) -> list[str]:
    pre = f"model.layers.{i}."
    return [n[len(pre):] for n in ck.info if n.startswith(pre)]


class Planner:
    def __init__(self, cfg: MergeConfig, ckpts: dict[str, Checkpoint], vocab_size: int | None = None):
        self.cfg, self.ck = cfg, ckpts
        self.method = METHODS[cfg.merge_method]
        self.vocab_size = vocab_size  # set when tokenizer_source aligns vocabularies
        self.load_dtype = DTYPES[cfg.dtype] if cfg.dtype else None
        self.out_dtype = DTYPES[cfg.out_dtype] if cfg.out_dtype else None
        if cfg.models_form:  # mergekit: every model's full depth, which must agree
            depths = {m.model: num_layers(self.ck[m.model]) for m in cfg.slices[0].sources}
            if len(set(depths.values())) != 1:
                raise ValueError("models have different numbers of layers: "
                                 + ", ".join(f"{n} ({p})" for p, n in depths.items()) + "; use slices")
            for s in cfg.slices[0].sources:
                s.layer_range = (0, depths[s.model])
        for s in cfg.slices:
            for src in s.sources:
                n = num_layers(self.ck[src.model])
                if src.layer_range[1] > n:
                    raise ValueError(f"layer_range {list(src.layer_range)} is beyond the {n} layers of {src.model}")

    def _base(self, sl: Slice) -> str | None:
        return sl.base_model or self.cfg.base_model

    def _check_inputs(self, sl: Slice, where: str) -> None:
        models = [s.model for s in sl.sources]
        if len(set(models)) != len(models):
            raise ValueError(f"{where}: a model appears twice among the inputs")
        base = self._base(sl)
        if self.method.base == "required":
            if base is None:
                raise ValueError(f"merge_method {self.method.name} requires a base_model")
            if base not in models:
                raise ValueError(f"{where}: base_model {base} is not among the inputs")
        if self.method.n_inputs and len(models) != self.method.n_inputs:
            raise ValueError(f"{where}: merge_method {self.method.name} takes exactly {self.method.n_inputs} "
                             f"models, got {len(models)}")

    def _params(self, sl: Slice, out: str, in_names: list[str], models: list[str], base_index: int | None,
                t: float) -> dict:
        shared_scopes = [sl.parameters, self.cfg.parameters]
        p = {}
        for prm in self.method.params:
            if not prm.per_input:
                p[prm.name] = resolve(prm.name, prm.kind, prm.default, shared_scopes, out, t)
                continue
            vals = []
            for i, (m, n) in enumerate(zip(models, in_names)):
                if prm.non_base and i == base_index:
                    continue
                own = [s.parameters for s in sl.sources if s.model == m]
                vals.append(resolve(prm.name, prm.kind, prm.default, own + shared_scopes, n, t, who=m))
            p[prm.name] = vals
        if self.method.name == "linear" and p["normalize"] and sum(p["weight"]) == 0:
            # mergekit divides by the sum and writes NaN; task_arithmetic/ties guard their divisor
            raise ValueError(f"parameter 'weight' for {out}: the weights {p['weight']} sum to 0, and linear with "
                             "normalize: true divides by their sum (set normalize: false or change a weight)")
        return p

    def _tensor(self, sl: Slice, out: str, in_names: list[str], t: float, optional: bool = False) -> TensorPlan | None:
        models = [s.model for s in sl.sources]
        base = self._base(sl)
        base_index = models.index(base) if base in models and self.method.base == "required" else None
        names = []
        for m, n in zip(models, in_names):
            ck = self.ck[m]
            if n not in ck and n == HEAD and EMBED in ck:
                n = EMBED  # tied embeddings: the head is the embedding table
            elif n not in ck:
                raise ValueError(f"{m}: no tensor {n} (needed for output {out}); the inputs' layouts differ")
            names.append(n)
        shapes = [self.ck[m].shape(n) for m, n in zip(models, names)]
        if len(set(shapes)) > 1 and not (is_vocab(out) and self.vocab_size is not None):
            if is_vocab(out) and len({s[1:] for s in shapes}) == 1:
                a, b = next((i, j) for i in range(len(shapes)) for j in range(len(shapes)) if shapes[i] != shapes[j])
                raise ValueError(
                    f"vocabulary sizes differ: {shapes[a][0]} ({self.ck[models[a]].file_of(names[a])}) vs "
                    f"{shapes[b][0]} ({self.ck[models[b]].file_of(names[b])}); set tokenizer_source: base or "
                    "union to align them")
            raise ValueError(f"shape mismatch for {out}: "
                             + ", ".join(f"{list(s)} ({self.ck[m].file_of(n)})" for s, m, n in zip(shapes, models, names)))
        shape = shapes[0]
        if is_vocab(out) and self.vocab_size is not None:
            shape = (self.vocab_size, *shape[1:])
        dtype = self.load_dtype
        if dtype is None:
            dtype = self.ck[models[0]].info[names[0]][2]
            for m, n in zip(models[1:], names[1:]):
                dtype = torch.promote_types(dtype, self.ck[m].info[n][2])
        if not dtype.is_floating_point:
            raise ValueError(f"{out}: {dtype} tensors cannot be merged")
        params = self._params(sl, out, in_names, models, base_index, t)
        return TensorPlan(out, list(zip(models, names)), base_index, params, shape, self.out_dtype or dtype,
                          self.load_dtype, t, base)

    def plan(self) -> list[TensorPlan]:
        cfg = self.cfg
        for i, sl in enumerate(cfg.slices):
            self._check_inputs(sl, f"slices[{i}]" if not cfg.models_form else "models")
        first, last = cfg.slices[0], cfg.slices[-1]
        donor = self.ck[self._base(first) or first.sources[0].model]
        others = [n for n in donor.info if not LAYER.match(n)]
        # Non-layer names of any input (a head only some inputs have is still merged).
        for m in cfg.referenced_models():
            others += [n for n in self.ck[m].info if not LAYER.match(n) and n not in others]
        pre = [n for n in others if "embed" in n]
        post = [n for n in others if "embed" not in n]
        plans: list[TensorPlan] = []
        for n in pre:
            plans.append(self._tensor(first, n, [n] * len(first.sources), 0.0))
        out_layer = 0
        for sl in cfg.slices:
            start = [s.layer_range[0] for s in sl.sources]
            length = sl.sources[0].layer_range[1] - start[0]
            for k in range(length):
                t = k / (length - 1) if length > 1 else 1.0
                suffixes = _layer_suffixes(self.ck[sl.sources[0].model], start[0] + k)
                for s, a in zip(sl.sources[1:], start[1:]):
                    theirs = set(_layer_suffixes(self.ck[s.model], a + k))
                    if theirs != set(suffixes):
                        diff = sorted(theirs.symmetric_difference(suffixes))[0]
                        raise ValueError(f"layer {a + k} of {s.model} and layer {start[0] + k} of "
                                         f"{sl.sources[0].model} differ in tensor {diff!r}")
                for suf in suffixes:
                    plans.append(self._tensor(sl, f"model.layers.{out_layer}.{suf}",
                                              [f"model.layers.{a + k}.{suf}" for a in start], t))
                out_layer += 1
        for n in post:
            models = [s.model for s in last.sources]
            if n == HEAD and not any(HEAD in self.ck[m] for m in models):
                continue  # every input ties its head: so does the output
            plans.append(self._tensor(last, n, [n] * len(models), 0.0))
        self.n_layers = out_layer
        return plans
