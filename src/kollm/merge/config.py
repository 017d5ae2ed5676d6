"""The mergekit YAML, read as mergekit 0.1.5 reads it (`mergekit/config.py`, `parameter_resolver.py`).

    merge_method: slerp            # linear | slerp | task_arithmetic | ties
    base_model: path/to/base
    slices:                        # or `models: [{model: PATH, parameters: {...}}, ...]`
      - sources:
          - {model: path/a, layer_range: [0, 32]}
          - {model: path/b, layer_range: [0, 32]}
    parameters:
      t:
        - {filter: self_attn, value: [0, 0.5, 0.3, 0.7, 1]}   # a gradient across layer depth
        - {filter: mlp, value: [1, 0.5, 0.7, 0.3, 0]}
        - value: 0.5                                         # the fallback
    dtype: bfloat16                # inputs are cast to it on load (and it is the output dtype)
    out_dtype: float32             # optional output cast
    tokenizer_source: base         # base | union | a model path (vocabularies may then differ)
    chat_template: auto            # optional: "auto" (most common among inputs) or a Jinja string

A parameter setting is a scalar, a list of numbers (a gradient: sampled at the layer's relative
depth t ∈ [0, 1] within its slice by linear interpolation between neighbouring entries), or
conditions `{filter, value}` tried in order, the first whose `filter` is a substring of the
tensor name winning (no filter / "*" matches all). Settings are looked up from the narrowest
scope out: the input model's own `parameters` (per-input parameters only), the slice's, then
the top level. Unknown keys are errors naming the key.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kollm.argtypes import config_text
from kollm.merge.methods import METHODS

TOP_KEYS = {"merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype",
            "tokenizer_source", "tokenizer", "chat_template", "name"}
DTYPE_NAMES = ("float32", "bfloat16", "float16", "float64")


@dataclass(frozen=True)
class Cond:
    value: Any
    filter: str | None = None


@dataclass
class Source:
    model: str  # resolved local directory
    layer_range: tuple[int, int] | None  # None: all layers (the `models:` form)
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Slice:
    sources: list[Source]
    base_model: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class MergeConfig:
    merge_method: str
    slices: list[Slice]
    base_model: str | None
    parameters: dict[str, Any]
    dtype: str | None
    out_dtype: str | None
    tokenizer_source: str | None  # "base" | "union" | a model directory | None
    chat_template: str | None
    models_form: bool  # written as `models:` (mergekit then takes all layers of each model)
    raw: dict  # the YAML as given, for the model card and mergekit_config.yml

    def referenced_models(self) -> list[str]:
        """Every input model once, in first-mention order (base first if given)."""
        seen = [self.base_model] if self.base_model else []
        for s in self.slices:
            seen += [src.model for src in s.sources] + ([s.base_model] if s.base_model else [])
        return list(dict.fromkeys(seen))


def _err(where: str, msg: str) -> ValueError:
    return ValueError(f"{where}: {msg}")


def _setting(value: Any, where: str) -> Any:
    """Normalise a parameter setting to a scalar, a list of scalars, or a list of Cond."""
    scalar = (bool, int, float, str)
    if isinstance(value, float) and not math.isfinite(value):  # YAML's .nan / .inf: an all-NaN model
        raise _err(where, f"{value!r} is not a finite number")
    if isinstance(value, scalar):
        return value
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        if all(isinstance(v, scalar) for v in value):
            for i, v in enumerate(value):
                _setting(v, f"{where}[{i}]")
            return value
        if all(isinstance(v, dict) for v in value):
            conds = []
            for i, c in enumerate(value):
                extra = set(c) - {"value", "filter"}
                if extra or "value" not in c:
                    raise _err(f"{where}[{i}]", "a condition is {filter: NAME, value: V}"
                               + (f"; unknown key {sorted(extra)[0]!r}" if extra else "; 'value' is missing"))
                f = c.get("filter")
                if f is not None and not isinstance(f, str):
                    raise _err(f"{where}[{i}].filter", f"must be a string, got {f!r}")
                conds.append(Cond(_setting(c["value"], f"{where}[{i}].value"), f))
            return conds
    raise _err(where, f"a parameter is a number, a list of numbers or {{filter, value}} conditions; got {value!r}")


def _params(d: Any, where: str) -> dict[str, Any]:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise _err(where, f"must be a mapping of parameter names to settings, got {type(d).__name__}")
    return {k: _setting(v, f"{where}.{k}") for k, v in d.items()}


def _model_path(ref: Any, where: str, root: Path | None) -> str:
    if isinstance(ref, dict):  # mergekit's long form {model: {path: ...}}
        ref = (ref.get("model") or {}).get("path") if isinstance(ref.get("model"), dict) else ref.get("path")
    if not isinstance(ref, str) or not ref:
        raise _err(where, f"a model is a local directory path, got {ref!r}")
    if "+" in ref:
        raise _err(where, f"{ref!r}: LoRA references (model+lora) are not supported; merge the adapter first")
    path = Path(os.path.expanduser(ref))
    if not path.is_absolute() and not path.exists() and root is not None and (root / path).exists():
        path = root / path  # relative to the config file as a fallback to the working directory
    if not path.is_dir():
        raise _err(where, f"{ref!r} is not a local directory (kollm merges local Hugging Face directories; "
                          "download hub models first)")
    return str(path.resolve())


def _range(v: Any, where: str) -> tuple[int, int]:
    if (not isinstance(v, (list, tuple)) or len(v) != 2 or not all(isinstance(x, int) and not isinstance(x, bool)
                                                                    for x in v) or not 0 <= v[0] < v[1]):
        raise _err(where, f"layer_range is [start, end) with 0 <= start < end, got {v!r}")
    return int(v[0]), int(v[1])


def parse_config(raw: dict | str | os.PathLike, root: str | os.PathLike | None = None) -> MergeConfig:
    """A merge config (dict, or a YAML file path) → MergeConfig; errors name the file and key."""
    where = "config"
    if not isinstance(raw, dict):
        path = Path(raw)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such merge config")
        try:
            raw = yaml.safe_load(config_text(path))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise ValueError(f"{path}: invalid YAML" + (f" at line {mark.line + 1}" if mark else "")) from None
        where, root = str(path), root or path.parent
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a merge config is a YAML mapping")
    rootp = Path(root) if root is not None else None
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise _err(where, f"unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(TOP_KEYS))})")
    if "modules" in raw:
        raise _err(where, "'modules' (multi-module models) is not supported")
    method = raw.get("merge_method")
    if method not in METHODS:
        raise _err(f"{where}: merge_method", f"{method!r} is not one of {', '.join(METHODS)}")
    if bool(raw.get("models")) == bool(raw.get("slices")):
        raise _err(where, "exactly one of 'models' or 'slices' must be given")
    base = _model_path(raw["base_model"], f"{where}: base_model", rootp) if raw.get("base_model") else None
    slices: list[Slice] = []
    if raw.get("models"):
        if not isinstance(raw["models"], list):
            raise _err(f"{where}: models", "must be a list of {model: PATH, parameters: {...}}")
        sources = []
        for i, m in enumerate(raw["models"]):
            w = f"{where}: models[{i}]"
            m = {"model": m} if isinstance(m, str) else m
            if not isinstance(m, dict) or set(m) - {"model", "parameters"}:
                raise _err(w, "an entry is {model: PATH, parameters: {...}}")
            sources.append(Source(_model_path(m.get("model"), f"{w}.model", rootp), None,
                                  _params(m.get("parameters"), f"{w}.parameters")))
        if base and base not in [s.model for s in sources]:
            sources.append(Source(base, None))  # mergekit adds the base as an input
        slices.append(Slice(sources))
    else:
        if not isinstance(raw["slices"], list):
            raise _err(f"{where}: slices", "must be a list of {sources: [...]}")
        for i, s in enumerate(raw["slices"]):
            w = f"{where}: slices[{i}]"
            if not isinstance(s, dict) or not isinstance(s.get("sources"), list) or not s["sources"]:
                raise _err(w, "a slice is {sources: [{model: PATH, layer_range: [a, b]}, ...]}")
            extra = set(s) - {"sources", "base_model", "parameters", "residual_weight"}
            if extra:
                raise _err(w, f"unknown key {sorted(extra)[0]!r}")
            srcs = []
            for j, src in enumerate(s["sources"]):
                ws = f"{w}.sources[{j}]"
                if not isinstance(src, dict) or set(src) - {"model", "layer_range", "parameters"}:
                    raise _err(ws, "a source is {model: PATH, layer_range: [a, b], parameters: {...}}")
                if "layer_range" not in src:
                    raise _err(ws, "'layer_range' is missing")
                srcs.append(Source(_model_path(src.get("model"), f"{ws}.model", rootp),
                                   _range(src["layer_range"], f"{ws}.layer_range"),
                                   _params(src.get("parameters"), f"{ws}.parameters")))
            lengths = {b - a for a, b in (x.layer_range for x in srcs)}
            if len(lengths) != 1:
                raise _err(w, f"all sources of a slice must span the same number of layers, got {sorted(lengths)}")
            sb = _model_path(s["base_model"], f"{w}.base_model", rootp) if s.get("base_model") else None
            slices.append(Slice(srcs, sb, _params(s.get("parameters"), f"{w}.parameters")))
    for key in ("dtype", "out_dtype"):
        v = raw.get(key)
        if v is not None and str(v).removeprefix("torch.") not in DTYPE_NAMES:
            raise _err(f"{where}: {key}", f"{v!r} is not one of {', '.join(DTYPE_NAMES)}")
    tok = raw.get("tokenizer_source")
    if raw.get("tokenizer") is not None:
        t = raw["tokenizer"]
        if tok is not None:
            raise _err(where, "give 'tokenizer_source' or 'tokenizer', not both")
        if not isinstance(t, dict) or set(t) - {"source"}:
            raise _err(f"{where}: tokenizer", "only {source: base|union|PATH} is supported (not tokens/padding)")
        tok = t.get("source", "union")
    if tok is not None and tok not in ("base", "union"):
        tok = _model_path(tok, f"{where}: tokenizer_source", rootp)
    ct = raw.get("chat_template")
    if ct is not None and (not isinstance(ct, str) or (ct != "auto" and "{" not in ct)):
        raise _err(f"{where}: chat_template", "is 'auto' or a Jinja template string")
    return MergeConfig(
        merge_method=method, slices=slices, base_model=base, parameters=_params(raw.get("parameters"),
                                                                                f"{where}: parameters"),
        dtype=str(raw["dtype"]).removeprefix("torch.") if raw.get("dtype") else None,
        out_dtype=str(raw["out_dtype"]).removeprefix("torch.") if raw.get("out_dtype") else None,
        tokenizer_source=tok, chat_template=ct, models_form=bool(raw.get("models")), raw=raw)


# ---- parameter evaluation (mergekit's evaluate_setting / resolve_parameter) -----------------
def _coerce(v: Any, kind: type, name: str) -> Any:
    if kind is bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false"):
            return v.lower() == "true"
        if isinstance(v, (int, float)) and v in (0, 1):
            return bool(v)
        raise ValueError(f"parameter {name!r}: {v!r} is not a boolean")
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"parameter {name!r}: {v!r} is not a number") from None
    if not math.isfinite(x):  # "nan" as a string gets past the parser's check
        raise ValueError(f"parameter {name!r}: {v!r} is not a finite number")
    return x


def evaluate(setting: Any, tensor_name: str, t: float, kind: type, name: str) -> Any:
    """One setting at one tensor and relative depth t; None when no condition matches."""
    if isinstance(setting, (bool, int, float, str)):
        return _coerce(setting, kind, name)
    if not setting:
        return None
    if isinstance(setting[0], Cond):
        for c in setting:
            if c.filter is None or c.filter == "*" or (tensor_name and c.filter in tensor_name):
                return evaluate(c.value, tensor_name, t, kind, name)
        return None
    values = [_coerce(v, kind, name) for v in setting]
    if kind is bool:
        return values[int(t * (len(values) - 1))]
    scaled = t * (len(values) - 1)  # a gradient: linear between neighbouring anchors
    i0 = int(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return float((1 - frac) * values[i0] + frac * values[i1])


def resolve(name: str, kind: type, default: Any, scopes: list[dict], tensor_name: str, t: float,
            who: str = "") -> Any:
    """First scope (narrowest first) whose setting yields a value; else the default; else an error."""
    for scope in scopes:
        if name in scope:
            v = evaluate(scope[name], tensor_name, t, kind, name)
            if v is not None:
                return v
    if default is None:
        raise ValueError(f"missing required parameter {name!r} for {who + '.' if who else ''}{tensor_name}")
    return default
