"""Autoregressive generation with a KV cache: greedy, temperature, top-k, top-p, stop criteria.

The one generator of kollm: `kollm generate`, GRPO and online-DPO rollouts call `generate`;
`kollm serve`'s continuous-batching engine (also what evaluation's generation tasks run, offline)
keeps its own scheduling but decodes with the same static cache and compiled step
(`forward_static`, `decode_step`).

Follows the sampling order of transformers' `generate` (temperature → top-k → top-p → sample) and
its output convention (a stop token is kept as the last generated token). A batch of prompts is
left-padded; each row's RoPE positions count only its real tokens and an explicit boolean mask
hides the pad keys, so a row's tokens do not depend on what else is in the batch.

Two caches (`GenerationConfig.cache`):
- "static" (default): keys/values preallocated for the request's bound (longest prompt +
  max_new_tokens, rounded up to a multiple of 64 so nearby lengths share shapes) and written in
  place at the current column, so every decode step has the same shapes and the one-token step
  can be compiled (gpt-fast; transformers' StaticCache): `torch.compile` with CUDA graphs
  (mode="reduce-overhead") on CUDA, inductor on CPU (where a Linear of a few rows becomes one
  multiply-and-sum reduction: MKL's sgemv reads weights at half the speed). The prompt's prefill stays eager (its length
  varies). Compiled, a finished row stays in the batch (its tokens are dropped) so the shapes do
  not change; eager, it leaves the batch and the cache. (Seeded sampling is reproducible for a
  given mode; a row leaving changes the batch the later draws are made over.)
- "dynamic": the cache grows as tokens come (no memory reserved for tokens a request may never
  generate) and a finished row leaves the batch and the cache; eager only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kollm.model.transformer import CausalLM, KVCache, StaticKVCache

BUCKET = 64  # static cache lengths are rounded up to a multiple: nearby request lengths share one graph


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    do_sample: bool = False  # False: greedy (argmax)
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    seed: int | None = None  # sampling seed; None draws from torch's global RNG
    stop_token_ids: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)  # need a `decode` function
    cache: str = "static"  # "static" (preallocated, fixed shapes, compilable) | "dynamic" (grows; eager)
    compile: bool | None = None  # compile the one-token decode step; None: on for CUDA, off on CPU
    cache_len: int | None = None  # static cache columns; None: longest prompt + max_new_tokens, rounded up to 64

    def __post_init__(self) -> None:
        problems = []
        if self.cache not in ("static", "dynamic"):
            problems.append(f"cache must be static or dynamic, got {self.cache!r}")
        elif self.cache == "dynamic" and self.compile:
            problems.append("compile needs cache='static' (a growing cache changes shapes every step)")
        if self.cache_len is not None and self.cache_len < 2:
            problems.append(f"cache_len must be >= 2, got {self.cache_len}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            problems.append(f"temperature must be > 0 (use greedy instead of 0), got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if problems:
            raise ValueError("invalid GenerationConfig: " + "; ".join(problems))


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits per row (ties at the k-th value are kept), the rest → -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter (Holtzman et al.): keep the smallest set of most likely tokens whose
    probability mass is >= p; the most likely token is always kept."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sampling_logits(logits: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
    """Temperature, then top-k, then top-p: transformers' order of the same warpers."""
    return top_p_filter(top_k_filter(logits.float() / cfg.temperature, cfg.top_k), cfg.top_p)


def next_tokens(logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits of the last position → (B,) chosen token ids."""
    if not cfg.do_sample:
        return logits.argmax(dim=-1)
    return torch.multinomial(sampling_logits(logits, cfg).softmax(dim=-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: CausalLM,
    prompts: Sequence[Sequence[int]],
    cfg: GenerationConfig,
    decode: Callable[[list[int]], str] | None = None,
) -> list[list[int]]:
    """Generate a continuation of each prompt; returns the new token ids per prompt (a stop
    token, if one ended the row, is included). `decode` (token ids → text) is needed for
    `cfg.stop_strings`: a row stops once its generated text contains one."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt and every prompt needs at least one token")
    vocab = model.config.vocab_size
    for i, p in enumerate(prompts):
        if min(p) < 0 or max(p) >= vocab:
            raise ValueError(f"prompt {i} has token ids outside the model's vocabulary [0, {vocab})")
    if cfg.stop_strings and decode is None:
        raise ValueError("stop_strings need a decode function (token ids -> text)")
    L = max(len(p) for p in prompts)
    cfg = cap_to_context(cfg, L, model.config.max_seq_len)
    if cfg.cache == "static" and cfg.cache_len is not None and L + cfg.max_new_tokens > cfg.cache_len:
        raise ValueError(f"the request needs {L + cfg.max_new_tokens} cache columns (longest prompt {L} + "
                         f"max_new_tokens {cfg.max_new_tokens}), more than cache_len {cfg.cache_len}")
    was_training = model.training
    model.eval()  # also keeps the MTP head idle
    try:
        return (_decode_static if cfg.cache == "static" else _decode)(model, prompts, cfg, decode)
    finally:
        model.train(was_training)


def cap_to_context(cfg: GenerationConfig, prompt_len: int, context: int,
                   log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> GenerationConfig:
    """`cfg` with max_new_tokens cut to what fits the model's context after the longest prompt
    (positions past it were never trained; 1e8 tokens used to reserve memory for all of them)."""
    room = context - prompt_len
    if room < 1:
        raise ValueError(f"the prompt has {prompt_len} tokens: it fills the model's context of {context}")
    if cfg.max_new_tokens <= room:
        return cfg
    log(f"max_new_tokens {cfg.max_new_tokens} capped at {room}: the model's context is {context} tokens "
        f"and the prompt takes {prompt_len}")
    return dataclasses.replace(cfg, max_new_tokens=room)


def _start(prompts, width: int, cfg: GenerationConfig, device: torch.device):
    """The left-padded prompt batch both caches start from: ids (B, L), `valid` (B, width) marking
    the columns that hold real tokens, each row's RoPE positions (counting only its real tokens) and
    the sampling generator (None: torch's global RNG)."""
    B, L = len(prompts), max(len(p) for p in prompts)
    ids = torch.zeros(B, L, dtype=torch.long, device=device)  # left padding: id 0, never attended to
    valid = torch.zeros(B, width, dtype=torch.bool, device=device)
    for b, p in enumerate(prompts):
        ids[b, L - len(p):] = torch.tensor(list(p), dtype=torch.long)
        valid[b, L - len(p):L] = True
    positions = (valid[:, :L].long().cumsum(-1) - 1).clamp(min=0)
    generator = None
    if cfg.do_sample and cfg.seed is not None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    return ids, valid, positions, generator


def _decode(model: CausalLM, prompts, cfg: GenerationConfig, decode) -> list[list[int]]:
    """The dynamic cache: grows with the tokens, finished rows dropped."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    B, L = len(prompts), max(len(p) for p in prompts)
    total = L + cfg.max_new_tokens
    ids, valid, positions, generator = _start(prompts, total, cfg, device)
    stop_ids = set(cfg.stop_token_ids)

    causal = torch.ones(L, L, dtype=torch.bool, device=device).tril()
    # A pad query may see only itself: an empty softmax row would put NaN into the cache.
    mask = (causal & valid[:, None, :L]) | torch.eye(L, dtype=torch.bool, device=device)
    cache = KVCache(model.config, B, total, device, dtype)
    logits = model(ids, position_ids=positions, attn_mask=mask[:, None], cache=cache, last_only=True).logits[:, -1]
    next_pos = positions[:, -1] + 1
    rows = list(range(B))  # prompt index of each live batch row
    out: list[list[int]] = [[] for _ in range(B)]
    for step in range(cfg.max_new_tokens):
        tok = next_tokens(logits, cfg, generator)
        keep = []
        for j, (r, t) in enumerate(zip(rows, tok.tolist())):
            out[r].append(t)
            stopped = t in stop_ids or (cfg.stop_strings and any(s in decode(out[r]) for s in cfg.stop_strings))
            if not stopped:
                keep.append(j)
        if not keep or step == cfg.max_new_tokens - 1:
            break
        if len(keep) < len(rows):
            sel = torch.tensor(keep, device=device)
            cache.select(sel)
            rows, tok, valid, next_pos = [rows[j] for j in keep], tok[sel], valid[sel], next_pos[sel]
        S = cache.pos + 1
        valid[:, S - 1] = True
        logits = model(tok[:, None], position_ids=next_pos[:, None], attn_mask=valid[:, None, None, :S],
                       cache=cache).logits[:, -1]
        next_pos = next_pos + 1
    return out


def forward_static(model: CausalLM, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                   cache: StaticKVCache) -> torch.Tensor:
    """(B, V) logits of the last of `ids` (B, T), whose keys/values go to the cache columns
    `cache.index`; `mask` (B, 1, T, cache.max_len) says which columns each query sees. The
    model's layers as `CausalLM.forward` runs them, without its Python bookkeeping (`cache.pos`),
    so a compiled step has nothing to guard on but shapes."""
    h = model.model.embed_tokens(ids)
    cos, sin = model.rope(positions, h.dtype)
    for layer in model.model.layers:
        h = layer(h, cos, sin, mask, cache)
    return model.lm_head(model.model.norm(h[:, -1]))


def _one_token(model: CausalLM, tok: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor,
               cache: StaticKVCache) -> torch.Tensor:
    # tok, pos: (B,); valid: (B, max_len) real keys, the column being written included
    return forward_static(model, tok[:, None], pos[:, None], valid[:, None, None, :], cache)


_COMPILED: dict[tuple[str, str | None, str], Callable] = {}
_GRAPHS = {"decode_graphs": 0, "linears_as_reductions": 0}

# Batch-1 decoding on a CPU is a stream of matrix-vector products: every step reads all the
# weights once. MKL's sgemv for a Linear of 1-4 rows reads them at 9 GB/s on the 2-core box and
# does not use the second core; the same product written as multiply-and-sum becomes one
# inductor reduction kernel, vectorised and split over the cores, at 16.5 GB/s (small-20m's 57
# Linears at batch 1: 3.8 ms against 7.1 ms; at 8 rows the two are equal, so the rewrite stops at 4).
GEMV_ROWS = 4


def _linear_as_reduction(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    # products and sum in fp32, as a bf16 matmul accumulates (inductor fuses the casts: no copy)
    y = (x.unsqueeze(-2).float() * weight.float()).sum(-1)
    return (y if bias is None else y + bias.float()).to(x.dtype)


def _cpu_backend(backend: str) -> Callable:
    """The CPU decode step's compiler: Linears over at most GEMV_ROWS rows (a shape dynamo has
    fixed, not a dynamic batch) become multiply-and-sum, then `backend` compiles the graph
    (inductor with the C++ wrapper, which calls the kernels without Python in between: 8.2 ms a
    step against 9.6 ms on small-20m)."""
    def compile_graph(gm: torch.fx.GraphModule, example_inputs):
        for node in gm.graph.nodes:
            x = node.args[0].meta.get("example_value") if node.target is torch._C._nn.linear else None
            if isinstance(x, torch.Tensor) and isinstance(rows := x.numel() // x.shape[-1], int) \
                    and rows <= GEMV_ROWS:
                node.target = _linear_as_reduction
                _GRAPHS["linears_as_reductions"] += 1
        gm.recompile()
        if backend == "inductor":
            from torch._inductor.compile_fx import compile_fx

            return compile_fx(gm, example_inputs, config_patches={"cpp_wrapper": True})
        return torch._dynamo.lookup_backend(backend)(gm, example_inputs)

    return compile_graph


def compile_settings(device: torch.device) -> tuple[str, str | None]:
    """(backend, mode) of the compiled step: KOLLM_COMPILE_BACKEND as in kollm.train.parallel
    (default inductor; tests use aot_eager, inductor's code generation is slow on a 2-core box);
    CUDA graphs (mode="reduce-overhead") where inductor runs on CUDA."""
    backend = os.environ.get("KOLLM_COMPILE_BACKEND", "inductor")
    return backend, ("reduce-overhead" if backend == "inductor" and device.type == "cuda" else None)


def use_compile(setting: bool | None, device: torch.device, model: CausalLM | None = None) -> bool:
    """`GenerationConfig.compile`: None compiles on CUDA, except a model whose parameters FSDP2 has
    sharded (DTensor, gathered by hooks at each forward): that one stays eager."""
    if setting is not None:
        return setting
    if device.type != "cuda":
        return False
    if model is None:
        return True
    from torch.distributed.tensor import DTensor

    return not any(isinstance(p, DTensor) for p in model.parameters())


def decode_step(device: torch.device, compile: bool, cuda_graphs: bool = True) -> Callable:
    """The one-token forward `(model, tok, pos, valid, cache) -> (B, V) logits`, compiled once per
    process and backend (every model, batch and cache length shares the compiled function; dynamo
    adds a graph only for a new shape: `decode_graphs()` counts them). `cuda_graphs=False`: inductor
    without CUDA graphs, for a caller whose shapes and buffers change often (the serve engine)."""
    if not compile:
        return _one_token
    backend, mode = compile_settings(device)
    if not cuda_graphs:
        mode = None
    key = (backend, mode, device.type)
    if key not in _COMPILED:
        if device.type == "cpu":
            compiled = torch.compile(_one_token, backend=_cpu_backend(backend), fullgraph=True)
        else:
            compiled = torch.compile(_one_token, backend=backend, mode=mode, fullgraph=True)

        def counted(*args):
            from torch._dynamo.utils import counters

            before = counters["stats"]["unique_graphs"]
            if mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are consumed
            out = compiled(*args)
            _GRAPHS["decode_graphs"] += counters["stats"]["unique_graphs"] - before
            return out

        _COMPILED[key] = counted
    return _COMPILED[key]


def decode_graphs() -> int:
    """Graphs dynamo has compiled for the decode step in this process: one for the first (batch,
    cache length); a second shape compiles once more with that size made dynamic (and batch 1,
    which dynamo specialises, once); shapes seen before never compile again."""
    return _GRAPHS["decode_graphs"]


# CUDA graphs replay on fixed addresses: the compiled CUDA path keeps the last cache per model and
# reuses it for a request of the same shape (a new buffer would make them record again).
_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its last StaticKVCache


def static_cache(model: CausalLM, batch: int, length: int, device: torch.device, dtype: torch.dtype,
                 keep: bool = False) -> StaticKVCache:
    old = _KEPT.get(model)
    if keep and old is not None and old.k[0].shape[0] == batch and old.max_len == length \
            and old.k[0].dtype == dtype and old.k[0].device == device:
        for t in old.k + old.v:
            t.zero_()  # stale keys are masked, but a stale NaN would still poison 0 x NaN
        old.pos = 0
        return old
    _KEPT.pop(model, None)
    cache = StaticKVCache(model.config, batch, length, device, dtype)
    if keep:
        for t in cache.k + cache.v:
            torch._dynamo.mark_static_address(t)
        _KEPT[model] = cache
    return cache


def _decode_static(model: CausalLM, prompts, cfg: GenerationConfig, decode) -> list[list[int]]:
    """The static cache: columns [0, L) hold the left-padded prompts, column L + s the s-th new
    token of every row; each decode step writes one column and attends over all of them, masked."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    B, L = len(prompts), max(len(p) for p in prompts)
    N = cfg.cache_len or -(-(L + cfg.max_new_tokens) // BUCKET) * BUCKET
    compiled = use_compile(cfg.compile, device, model)
    ids, valid, positions, generator = _start(prompts, N, cfg, device)
    stop_ids = set(cfg.stop_token_ids)

    cache = static_cache(model, B, N, device, dtype, keep=compiled and device.type == "cuda")
    cols, keys = torch.arange(L, device=device), torch.arange(N, device=device)
    # Causal over real keys; a pad query sees only itself (an empty softmax row would put NaN in the cache).
    mask = ((keys[None, :] <= cols[:, None]) & valid[:, None, :]) | (keys[None, :] == cols[:, None])
    cache.index = cols
    logits = forward_static(model, ids, positions, mask[:, None], cache)
    cache.index = torch.zeros(1, dtype=torch.long, device=device)  # the column each step writes
    step = decode_step(device, compiled)
    next_pos = positions[:, -1] + 1
    rows = list(range(B))  # prompt index of each batch row
    done = [False] * B
    out: list[list[int]] = [[] for _ in range(B)]
    for s in range(cfg.max_new_tokens):
        tok = next_tokens(logits, cfg, generator)
        for r, t in zip(rows, tok.tolist()):
            if not done[r]:
                out[r].append(t)
                done[r] = t in stop_ids or bool(cfg.stop_strings and any(x in decode(out[r]) for x in cfg.stop_strings))
        if all(done) or s == cfg.max_new_tokens - 1:
            break
        keep = [j for j, r in enumerate(rows) if not done[r]]
        if not compiled and len(keep) < len(rows):
            # eager: finished rows leave the batch (a compiled step keeps its shapes and their rows)
            sel = torch.tensor(keep, device=device)
            cache.select(sel)
            rows, tok, valid, next_pos = [rows[j] for j in keep], tok[sel], valid[sel], next_pos[sel]
        valid[:, L + s] = True
        cache.index.fill_(L + s)
        logits = step(model, tok, next_pos, valid, cache)
        next_pos = next_pos + 1
    return out


def whole_characters(decode: Callable[[list[int]], str], ids: list[int]) -> str:
    """The text of `ids` up to the last complete character. Byte-level tokens can split a
    multi-byte character (a Hangul syllable is 3 UTF-8 bytes): decoding a cut there ends in U+FFFD
    "�". Drop the up-to-3 tokens of an unfinished character rather than print half of it."""
    text = decode(ids)
    if not text.endswith("\ufffd"):
        return text
    for cut in range(1, min(3, len(ids)) + 1):
        shorter = decode(ids[:-cut])
        if not shorter.endswith("\ufffd"):
            return shorter
    return text  # not one unfinished character: leave it as decoded


def generate_text(model: CausalLM, tokenizer, prompts: Sequence[str], cfg: GenerationConfig,
                  chat: bool = True) -> list[tuple[str, list[int]]]:
    """Text in, (completion text, generated ids) out; the text is cut before the first stop string."""
    from kollm.data.chat import encode_prompt

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=True)

    outs = generate(model, [encode_prompt(tokenizer, p, chat) for p in prompts], cfg, decode)
    results = []
    for ids in outs:
        text = decode(ids)
        cuts = [text.find(s) for s in cfg.stop_strings if s in text]
        results.append((text[: min(cuts)] if cuts else text, ids))
    return results


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kollm generate", description="Generate a completion from a Hugging Face "
                                "checkpoint directory (KV cache; greedy or sampling).")
    p.add_argument("--model", required=True, help="checkpoint directory (config.json, safetensors, tokenizer)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--greedy", action="store_true", help="argmax decoding (default: sampling)")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], metavar="S", help="stop string (repeatable)")
    p.add_argument("--raw", action="store_true", help="send the prompt as is (default: as one user message through "
                   "the tokenizer's chat template, or kollm's default template where it has none, as `kollm serve`'s "
                   "/v1/chat/completions and `kollm sft` do)")
    p.add_argument("--json", action="store_true", help="print {completion, token_ids} as JSON")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compile the decode step (static KV cache; CUDA graphs on CUDA). Default: on for CUDA, "
                   "off on CPU (inductor's first compile takes tens of seconds there)")
    args = p.parse_args(argv)
    sampling = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}
    if args.greedy and any(v is not None for v in sampling.values()):
        p.error("--greedy excludes --temperature/--top-k/--top-p/--seed")

    from kollm.data.chat import load_tokenizer, stop_token_ids
    from kollm.model.hf import TOKENIZER_FILES, load_hf

    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: no such model directory")
    if not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(f"{model_dir}: no tokenizer files (tokenizer.json, tokenizer_config.json, ...)")
    tokenizer = load_tokenizer(model_dir)  # kollm's default chat template where it has none, as serve and sft
    model = load_hf(model_dir, device=args.device)
    cfg = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        do_sample=not args.greedy,
        **{k: v for k, v in sampling.items() if v is not None},
        stop_token_ids=stop_token_ids(tokenizer, model_dir),
        stop_strings=args.stop,
        compile=args.compile,
    )
    [(text, ids)] = generate_text(model, tokenizer, [args.prompt], cfg, chat=not args.raw)

    def decode(i: list[int]) -> str:
        return tokenizer.decode(i, skip_special_tokens=True)

    if text == decode(ids):  # not cut at a stop string: it may end inside a character
        text = whole_characters(decode, ids)
    print(json.dumps({"completion": text, "token_ids": ids}, ensure_ascii=False) if args.json else text)
    return 0


__all__ = ["GenerationConfig", "generate", "forward_static", "decode_step", "decode_graphs", "static_cache",
           "use_compile", "generate_text", "whole_characters", "cap_to_context", "next_tokens", "sampling_logits",
           "top_k_filter", "top_p_filter"]
