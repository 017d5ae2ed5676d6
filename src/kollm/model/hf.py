"""Hugging Face checkpoints in and out: Llama, Qwen2 and (for sandwich norm) Gemma 2 layouts.

kollm's parameter names already are HF Llama/Qwen2 names, so loading is a name-checked, streamed
copy: the model is built on the meta device, allocated once, and filled one tensor at a time from
`safetensors.safe_open` (never two copies of a large model, never pickle, never remote code).
Export writes `config.json` (both the transformers 5 `rope_parameters`/`dtype` keys and the 4.x
`rope_theta`/`rope_scaling`/`torch_dtype` keys, so older readers such as vLLM also understand it),
`model.safetensors` or shards plus `model.safetensors.index.json` (the transformers layout),
`generation_config.json` and tokenizer files, into a temp dir that is renamed into place.

Norm placement → architecture:
- `pre`: LlamaForCausalLM, or Qwen2ForCausalLM when q/k/v have biases.
- `sandwich` (Trillion §3.4): Gemma2ForCausalLM expresses it exactly with silu activation, no
  softcapping, query_pre_attn_scalar = head_dim and full attention in every layer. Gemma's
  RMSNorm multiplies by (1 + w) and its embedding output by sqrt(d); export stores w − 1 and
  E / sqrt(d) (tied: the final norm absorbs sqrt(d)), and loading undoes both. vLLM's Gemma 2
  accepts only tied embeddings, so an untied sandwich export loads in transformers, not vLLM.
- `post` (OLMo 2): HF's Olmo2 also normalises q and k, which kollm does not; no equivalent.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from kollm.model.config import ModelConfig, RopeScaling
from kollm.model.transformer import CausalLM, build_model

ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2", "Gemma2ForCausalLM": "gemma2"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt",
)


def require_tokenizer(model_dir: str | os.PathLike) -> None:
    """Raise FileNotFoundError naming `model_dir` when it holds no tokenizer, before transformers
    answers an empty directory with "You need to have sentencepiece or tiktoken installed"."""
    d = Path(model_dir)
    if any((d / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")):
        return
    if not (d / "config.json").is_file():
        raise FileNotFoundError(f"no config.json / tokenizer in {d}: not a model directory")
    raise FileNotFoundError(f"no tokenizer (tokenizer.json, tokenizer.model or vocab.json) in {d}")


# Old Llama checkpoints carry the RoPE table as a tensor; it is recomputed, never loaded.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# ---- config ---------------------------------------------------------------------------------
def read_config(path: str | os.PathLike) -> dict:
    f = Path(path) / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"{path}: no config.json (not a Hugging Face model directory)")
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: invalid JSON at line {e.lineno}: {e.msg}") from None


def _architecture(hf: dict) -> str:
    archs = hf.get("architectures") or []
    if not archs:  # some configs name only the model_type
        archs = [a for a, kind in ARCHITECTURES.items() if kind == hf.get("model_type")] or archs
    if len(archs) != 1 or archs[0] not in ARCHITECTURES:
        raise ValueError(f"unsupported architectures {archs!r} in config.json; kollm loads {', '.join(ARCHITECTURES)}")
    return archs[0]


def _rope_from_hf(hf: dict) -> tuple[float, RopeScaling | None]:
    # transformers 5 folds theta into `rope_parameters`; 4.x used `rope_theta` + `rope_scaling`.
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind in (None, "default"):
        return theta, None
    if kind != "llama3":
        raise ValueError(f"unsupported rope_type {kind!r} in config.json; kollm supports default and llama3")
    fields = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [k for k in fields if k not in params]
    if missing:
        raise ValueError(f"llama3 rope settings in config.json lack {', '.join(missing)}")
    return theta, RopeScaling(**{k: params[k] for k in fields})


def config_from_hf(hf: dict) -> ModelConfig:
    """A transformers config.json dict → ModelConfig; settings kollm cannot reproduce are errors."""
    arch = _architecture(hf)
    kind = ARCHITECTURES[arch]
    act = hf.get("hidden_activation" if kind == "gemma2" else "hidden_act", "silu")
    problems = [f"activation {act!r} (kollm's MLP is SwiGLU with silu)"] if act != "silu" else []
    if hf.get("attention_bias") and kind != "qwen2":
        problems.append("attention_bias=true (kollm has q/k/v biases only in the Qwen2 layout)")
    if hf.get("mlp_bias"):
        problems.append("mlp_bias=true")
    if kind == "qwen2" and hf.get("use_sliding_window"):
        problems.append("use_sliding_window=true")
    if kind == "gemma2":
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if hf.get(key) is not None:
                problems.append(f"{key}={hf[key]}")
        head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
        if hf.get("query_pre_attn_scalar", head_dim) != head_dim:
            problems.append(f"query_pre_attn_scalar={hf['query_pre_attn_scalar']} != head_dim {head_dim}")
        window, max_pos = hf.get("sliding_window"), hf.get("max_position_embeddings", 0)
        if "sliding_attention" in (hf.get("layer_types") or []) and window is not None and window < max_pos:
            problems.append(f"sliding-window layers (window {window} < max_position_embeddings {max_pos})")
    if problems:
        raise ValueError(f"config.json ({arch}) has settings kollm cannot reproduce: {'; '.join(problems)}")
    theta, scaling = _rope_from_hf(hf)
    try:
        return ModelConfig(
            vocab_size=hf["vocab_size"],
            dim=hf["hidden_size"],
            n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"],
            n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            ffn_dim=hf["intermediate_size"],
            head_dim=hf.get("head_dim"),
            norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=theta,
            rope_scaling=scaling,
            max_seq_len=hf.get("max_position_embeddings", 2048),
            tie_embeddings=bool(hf.get("tie_word_embeddings", kind == "gemma2")),
            norm_placement="sandwich" if kind == "gemma2" else "pre",
            qkv_bias=kind == "qwen2",
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
            pad_token_id=hf.get("pad_token_id"),
        )
    except KeyError as e:
        raise ValueError(f"config.json lacks required key {e.args[0]!r}") from None


def export_architecture(cfg: ModelConfig) -> str:
    """The transformers class that expresses `cfg` exactly; a ValueError naming why when none does."""
    if cfg.norm_placement == "pre":
        return "Qwen2ForCausalLM" if cfg.qkv_bias else "LlamaForCausalLM"
    if cfg.norm_placement == "sandwich" and not cfg.qkv_bias:
        return "Gemma2ForCausalLM"
    why = {
        "post": "HF's OLMo 2 layout also normalises q and k, which kollm does not",
        "sandwich": "Gemma 2 (the sandwich layout) has no q/k/v-only biases",
    }[cfg.norm_placement]
    raise ValueError(f"cannot export norm_placement={cfg.norm_placement!r}{' with qkv_bias' * cfg.qkv_bias} "
                     f"to Hugging Face: {why}")


def hf_config(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    """ModelConfig → transformers config.json dict (Llama, Qwen2 or Gemma2 layout)."""
    arch = export_architecture(cfg)
    kind = ARCHITECTURES[arch]
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    legacy_scaling = None
    if cfg.rope_scaling is not None:
        legacy_scaling = {"rope_type": "llama3", **vars(cfg.rope_scaling)}
        rope = {**legacy_scaling, "rope_theta": cfg.rope_theta}
    dtype_name = {v: k for k, v in DTYPES.items()}[dtype]
    out = {
        "architectures": [arch],
        "model_type": kind,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_parameters": rope,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": legacy_scaling,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_dropout": 0.0,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "dtype": dtype_name,
        "torch_dtype": dtype_name,
        "use_cache": True,
    }
    if kind == "llama":
        out |= {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False}
    elif kind == "qwen2":
        out |= {"hidden_act": "silu", "use_sliding_window": False, "sliding_window": None,
                "layer_types": ["full_attention"] * cfg.n_layers}
    else:
        out |= {"hidden_activation": "silu", "attention_bias": False, "query_pre_attn_scalar": cfg.head_dim,
                "attn_logit_softcapping": None, "final_logit_softcapping": None,
                # Every layer is full attention; transformers still builds a sliding mask and needs a window.
                "sliding_window": cfg.max_seq_len, "layer_types": ["full_attention"] * cfg.n_layers}
    return out


# ---- weights in -----------------------------------------------------------------------------
def _weight_files(d: Path) -> list[Path]:
    index = d / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: no 'weight_map'")
        files = [d / f for f in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"{index} names shard {f.name}, which is missing")
        return files
    if (d / "model.safetensors").is_file():
        return [d / "model.safetensors"]
    if list(d.glob("pytorch_model*.bin")):
        raise ValueError(f"{d}: only pickle weights (pytorch_model.bin); kollm loads safetensors only "
                         "(re-save with save_pretrained(safe_serialization=True))")
    raise FileNotFoundError(f"{d}: no model.safetensors or model.safetensors.index.json")


def _is_norm(name: str) -> bool:
    return name.endswith("layernorm.weight") or name == "model.norm.weight"


def _embed_scale(dim: int, dtype: torch.dtype) -> torch.Tensor:
    # Gemma multiplies by sqrt(d) cast to the weights' dtype; match its rounding.
    return torch.tensor(dim**0.5, dtype=dtype).float()


# Gemma 2 computes embed(E)·s with s = sqrt(d) and norms as (1 + w). kollm stores E·s and 1 + w.
# With tied embeddings the head also sees the scaled table, so the final norm absorbs 1/s:
# logits = (1 + w_g)·n(h)·E_gᵀ = [(1 + w_g)/s]·n(h)·(s·E_g)ᵀ.
def _from_gemma(name: str, t: torch.Tensor, cfg: ModelConfig, dtype: torch.dtype) -> torch.Tensor:
    s = _embed_scale(cfg.dim, dtype)
    if name == "model.embed_tokens.weight":
        return t.to(dtype).float() * s
    if _is_norm(name):
        w = t.float() + 1.0
        return w / s if name == "model.norm.weight" and cfg.tie_embeddings else w
    return t


def _to_gemma(name: str, t: torch.Tensor, cfg: ModelConfig, dtype: torch.dtype) -> torch.Tensor:
    s = _embed_scale(cfg.dim, dtype)
    if name == "model.embed_tokens.weight":
        return t.float() / s
    if _is_norm(name):
        w = t.float() * s if name == "model.norm.weight" and cfg.tie_embeddings else t.float()
        return w - 1.0
    return t


def _assign(model: CausalLM, name: str, t: torch.Tensor, device, dtype: torch.dtype) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    module._parameters[leaf] = torch.nn.Parameter(t.to(device=device, dtype=dtype), requires_grad=True)


def _check_weights(d: Path, files: list[Path], cfg: ModelConfig, params: dict[str, torch.Tensor],
                   arch: str) -> dict[str, Path]:
    """Every tensor name and shape in the safetensors headers against `params` (a model's
    deduplicated parameters), before any tensor is read → {name: file}; a ValueError naming the
    unexpected, mis-shaped or missing tensors."""
    where: dict[str, Path] = {}
    unexpected, mis_shaped = [], []
    for file in files:
        try:
            with safe_open(file, framework="pt") as f:
                for name in f.keys():
                    if name.endswith(_IGNORED_SUFFIXES) or (name == "lm_head.weight" and cfg.tie_embeddings):
                        continue
                    if name not in params:
                        unexpected.append(name)
                        continue
                    shape = tuple(f.get_slice(name).get_shape())
                    if shape != tuple(params[name].shape):
                        mis_shaped.append(f"{name}: expected {tuple(params[name].shape)}, got {shape}")
                    where[name] = file
        except SafetensorError as e:
            raise ValueError(f"{file}: not a readable safetensors file ({e})") from None
    missing = [n for n in params if where.get(n) is None]
    if unexpected:
        raise ValueError(f"{d}: unexpected tensors not in a {arch}: {', '.join(sorted(unexpected)[:8])}"
                         + (f" (+{len(unexpected) - 8} more)" if len(unexpected) > 8 else ""))
    if mis_shaped:
        raise ValueError(f"{d}: mis-shaped tensors: {'; '.join(mis_shaped[:8])}")
    if missing:
        raise ValueError(f"{d}: missing tensors: {', '.join(missing[:8])}"
                         + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
    return where


def load_hf(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> CausalLM:
    """Load a transformers checkpoint directory (safetensors) into a kollm CausalLM in eval mode.

    dtype None keeps the checkpoint's dtype (`dtype`/`torch_dtype` in config.json, fp32 if absent).
    On CPU, tensors already in `dtype` stay memory-mapped copy-on-write (as in transformers 5):
    replace a checkpoint by writing a new file, never by truncating the one a live model maps.
    """
    d = Path(path)
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this PyTorch build sees no CUDA device (use cpu)")
    hf = read_config(d)
    cfg = config_from_hf(hf)
    gemma = ARCHITECTURES[_architecture(hf)] == "gemma2"
    if dtype is None:
        name = hf.get("dtype") or hf.get("torch_dtype") or "float32"
        if name not in DTYPES:
            raise ValueError(f"{d / 'config.json'}: unsupported dtype {name!r}")
        dtype = DTYPES[name]
    files = _weight_files(d)

    # Headers only first: every name and shape is checked before any tensor is read.
    model = build_model(cfg, device="meta", dtype=dtype)
    where = _check_weights(d, files, cfg, dict(model.named_parameters()), _architecture(hf))

    # Each tensor read becomes the parameter itself (no preallocated copy to fill): memory is
    # one model plus the file pages of the shard being read, which the kernel can drop.
    with torch.no_grad():
        for name, t in _read_checked(where, cfg if gemma else None, lambda _: dtype):
            _assign(model, name, t, device, dtype)
            del t
    model.tie_weights()
    return model.eval()


def _read_checked(where: dict[str, Path], gemma: ModelConfig | None,
                  dtype_of: Callable[[str], torch.dtype]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor `_check_weights` placed, one at a time, file by file;
    Gemma 2's stored norms and embedding converted (`gemma`: the model's config) to kollm's."""
    for file in dict.fromkeys(where.values()):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                if where.get(name) != file:
                    continue  # ignored, or a tied lm_head
                # no local name: the generator must not keep a tensor alive while the next is read
                yield name, (f.get_tensor(name) if gemma is None
                             else _from_gemma(name, f.get_tensor(name), gemma, dtype_of(name)))


# ---- weights into a live model (kollm serve's /update_weights_from_disk) ----------------------
# The fields that fix the computation; a checkpoint that differs in one of them is another model.
# Named as config.json names them (kollm's own name in brackets where it differs).
_SAME_MODEL = {"vocab_size": "vocab_size", "dim": "hidden_size", "n_layers": "num_hidden_layers",
               "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads", "ffn_dim": "intermediate_size",
               "head_dim": "head_dim", "norm_eps": "rms_norm_eps", "rope_theta": "rope_theta",
               "rope_scaling": "rope_scaling", "max_seq_len": "max_position_embeddings",
               "tie_embeddings": "tie_word_embeddings", "norm_placement": "architectures",
               "qkv_bias": "architectures"}


@dataclass
class WeightUpdate:
    """A checked checkpoint directory: which file holds each of the live model's parameters."""

    path: Path
    where: dict[str, Path]
    gemma: bool


def check_weight_update(model: CausalLM, path: str | os.PathLike) -> WeightUpdate:
    """Headers only: `path`'s config.json must describe `model`'s architecture and its tensors
    must have `model`'s names and shapes. A ValueError/FileNotFoundError naming the first
    difference (a config.json key, or the tensors); nothing is read or changed."""
    d = Path(path)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such model directory")
    hf = read_config(d)
    cfg, live = config_from_hf(hf), model.config
    for field, key in _SAME_MODEL.items():
        new, old = getattr(cfg, field), getattr(live, field)
        if new != old:
            name = key if key == field else f"{key} ({field})"
            raise ValueError(f"{d / 'config.json'}: {name} is {new!r}, the served model has {old!r}: "
                             "not the same architecture")
    where = _check_weights(d, _weight_files(d), cfg, dict(model.named_parameters()), _architecture(hf))
    return WeightUpdate(d, where, ARCHITECTURES[_architecture(hf)] == "gemma2")


def check_finite(update: WeightUpdate) -> None:
    """A ValueError naming the first tensor of a checked checkpoint that holds a NaN or an
    infinity (a diverged run's export must not be served: every answer would be garbage). Reads
    every tensor once, one at a time, as stored (no conversion)."""
    for name, t in _read_checked(update.where, None, lambda n: torch.float32):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{update.where[name]}: tensor {name} holds NaN or infinite values")
        del t


@torch.no_grad()
def load_weights_into(model: CausalLM, update: WeightUpdate) -> None:
    """Copy a checked checkpoint's tensors into `model`'s parameters in place (the same storage:
    a compiled step and the parameters' devices stay as they are; memory is one tensor at a
    time), cast to each parameter's dtype."""
    params = dict(model.named_parameters())
    for name, t in _read_checked(update.where, model.config if update.gemma else None, lambda n: params[n].dtype):
        params[name].copy_(t)
        del t


# ---- weights out ----------------------------------------------------------------------------
def _export_tensors(model: CausalLM, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor in `dtype`) one at a time; the MTP head and a tied lm_head are left out."""
    cfg = model.config
    gemma = export_architecture(cfg) == "Gemma2ForCausalLM"
    names = dict(model.named_parameters(remove_duplicate=False))
    for name, p in names.items():
        if name.startswith("mtp.") or (name == "lm_head.weight" and cfg.tie_embeddings):
            continue
        t = p.detach()
        if gemma:
            t = _to_gemma(name, t, cfg, dtype)
        yield name, t.to(device="cpu", dtype=dtype).contiguous()


def parse_size(size: int | str) -> int:
    """5GB, 500MB, 2GiB or a byte count → bytes (transformers' max_shard_size spelling)."""
    if isinstance(size, int):
        return size
    s = size.strip().upper()
    units = {"GIB": 2**30, "MIB": 2**20, "KIB": 2**10, "GB": 10**9, "MB": 10**6, "KB": 10**3, "B": 1}
    for unit, mult in units.items():
        if s.endswith(unit):
            try:
                return int(float(s[: -len(unit)]) * mult)
            except ValueError:
                break
    if s.isdigit():
        return int(s)
    raise ValueError(f"bad max_shard_size {size!r}; use e.g. 5GB, 500MB or a byte count")


def _default_modes(d: Path) -> None:
    """The modes a plain `open`/`mkdir` would give under the current umask (0644 / 0755 usually),
    for the directory and every file in it: an export is meant to be shared."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(d, 0o777 & ~umask)
    for f in d.iterdir():
        if f.is_file():
            os.chmod(f, 0o666 & ~umask)


def _write_weights(model: CausalLM, out: Path, dtype: torch.dtype, max_shard_size: int) -> None:
    # Shards are filled in parameter order and written as soon as full: memory ≈ one shard.
    shards: list[list[str]] = []
    total, size, pending = 0, 0, {}
    tmp_names: list[str] = []

    def flush() -> None:
        nonlocal pending, size
        if pending:
            name = f"shard-{len(tmp_names):05d}.safetensors"
            save_file(pending, str(out / name), metadata={"format": "pt"})
            tmp_names.append(name)
            shards.append(list(pending))
        pending, size = {}, 0

    for name, t in _export_tensors(model, dtype):
        nbytes = t.numel() * t.element_size()
        if pending and size + nbytes > max_shard_size:
            flush()
        pending[name] = t
        size += nbytes
        total += nbytes
    flush()
    if len(tmp_names) == 1:
        os.rename(out / tmp_names[0], out / "model.safetensors")
        return
    weight_map = {}
    for i, (tmp, names) in enumerate(zip(tmp_names, shards)):
        final = f"model-{i + 1:05d}-of-{len(tmp_names):05d}.safetensors"
        os.rename(out / tmp, out / final)
        weight_map.update(dict.fromkeys(names, final))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _write_tokenizer(tokenizer, out: Path) -> None:
    if isinstance(tokenizer, (str, os.PathLike)):
        src = Path(tokenizer)
        found = [f for f in TOKENIZER_FILES if (src / f).is_file()]
        if not found:
            raise FileNotFoundError(f"{src}: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...)")
        for f in found:
            shutil.copy2(src / f, out / f)
        return
    if hasattr(tokenizer, "save_pretrained"):  # a transformers tokenizer
        tokenizer.save_pretrained(str(out))
        return
    from transformers import PreTrainedTokenizerFast  # a bare `tokenizers.Tokenizer`

    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(str(out))


def save_hf(
    model: CausalLM,
    out_dir: str | os.PathLike,
    tokenizer=None,
    dtype: torch.dtype | None = None,
    max_shard_size: int | str = "5GB",
    generation_config: dict | None = None,
) -> Path:
    """Write `model` as a transformers checkpoint directory; returns its path.

    tokenizer: None, a directory to copy tokenizer files from, a `tokenizers.Tokenizer` or a
    transformers tokenizer. dtype None keeps the model's dtype. generation_config: extra
    defaults (e.g. a source checkpoint's sampling settings) merged into generation_config.json. The directory appears complete
    or not at all: everything is written to a temp dir beside it and renamed into place.
    """
    cfg = model.config
    export_architecture(cfg)  # fail before writing anything
    dtype = dtype or next(model.parameters()).dtype
    if dtype not in DTYPES.values():
        raise ValueError(f"unsupported export dtype {dtype}; use one of {', '.join(DTYPES)}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: already exists and is not an empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg, dtype), indent=2) + "\n")
        gen = {k: getattr(cfg, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")
               if getattr(cfg, k) is not None} | (generation_config or {})
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        _write_weights(model, tmp, dtype, parse_size(max_shard_size))
        if tokenizer is not None:
            _write_tokenizer(tokenizer, tmp)
        _default_modes(tmp)  # mkdtemp makes the directory owner-only, safetensors its files 0600
        os.replace(tmp, out)  # atomic; replaces an empty directory too
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


__all__ = ["check_weight_update", "load_weights_into", "WeightUpdate", "config_from_hf", "export_architecture", "hf_config", "load_hf", "save_hf", "read_config", "parse_size"]
