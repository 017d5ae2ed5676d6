"""Per-rank memory plan for `kollm pretrain CONFIG --dry-run`: will each phase fit on the device?

Model states (N parameters, W ranks; ZeRO paper, Rajbhandari et al. 2020, §3: 16 bytes/parameter
for mixed-precision AdamW), as kollm lays them out:
- fp32 master weights 4N, fp32 gradients 4N, AdamW moments 8N (two fp32 tensors).
- `single`/`ddp`: nothing sharded. `zero1` and `fsdp` (both FSDP2): all three (/W).
- DDP keeps its own gradient buckets (gradient_as_bucket_view is off): another 4N.
- `zero1` (reshard_after_forward=False): the whole model gathered in the compute dtype (bf16: 2N)
  from the first forward to the end of backward, plus one block's unsharded gradient.
- bf16 autocast (single/ddp) caches a bf16 copy of every matmul weight for the whole
  forward+backward of a micro-batch (the trainer runs backward inside the autocast region): 2N'
  with N' the blocks' parameters (not the input embedding, a lookup, nor the LM head, which the
  chunked loss casts itself for the duration of the head's call).
- FSDP2 with bf16 parameters all-gathers the root group (embedding, LM head, final norms) and
  about two blocks at a time (the current one and the prefetched next), 2 bytes each, and reduces
  one block's unsharded gradient in fp32 (2 + 4 bytes per block parameter).

Activations saved for backward, per token of a micro-batch (bytes; a = compute dtype size, p =
parameter dtype size; Korthikanti et al. 2022's per-tensor accounting, with a fused attention
kernel that keeps no T×T matrix, as FlexAttention and SDPA flash/cuDNN do on CUDA):
- each RMSNorm feeding matmuls: its fp32 input copy 4d, the normalised output p·d and the matmuls'
  a·d input — one copy per matmul under autocast (3 for q/k/v, 2 for gate/up), one shared copy
  when parameters are already in the compute dtype — plus a 4-byte rstd; a sandwich post-norm
  keeps (4 + a)·d + 4;
- attention: q, k, v after RoPE and the output (a·(2·q + 2·kv), q = heads·head_dim, kv =
  kv_heads·head_dim), and the fp32 log-sum-exp per head (4·heads);
- SwiGLU MLP: gate, up, silu(gate) and their product, a·4·f;
- the loss, chunked (kollm.train.objectives.chunked): no (tokens, V) logits; per token each head's
  gradient with respect to its hidden states (p·d, computed in forward), per micro-batch each
  head's weight gradient (p·V·d), the fp32 accumulator of one (4·V·d), the autocast copy of the
  head weight and one chunk's logits (loss_fixed_bytes).
With activation checkpointing each block keeps only its input (p bytes·d when the residual is in
the parameter dtype) and, in backward, one block's activations exist again during its recomputation.
The peak is the forward's (at the loss) or the backward's (the blocks' activations beside the
gradients), not their sum; with gradient accumulation the gradients sit beside every forward.
tests/train/test_memory.py compares the block formula with the bytes autograd really saves on
CPU and the whole plan with a measured peak (bench/bench_memory_plan.py: every parallel mode ×
checkpointing × precision on 2 gloo ranks, within 10 %); docs/memory-plan.md works the numbers
for trillion-7b and dna-8b-cpt by hand and has the measured table.
"""

from __future__ import annotations

from dataclasses import dataclass

from kollm.model.config import ModelConfig
from kollm.plan import GB, H100_MEMORY, RESERVE_FRACTION
from kollm.train.objectives.chunked import chunk_rows
from kollm.train.parallel import checkpointed_blocks


def block_activation_bytes(cfg: ModelConfig, a: int = 2, p: int = 4) -> int:
    """Bytes one block saves for backward, per token (a: compute dtype bytes, p: parameter dtype bytes)."""
    d, f = cfg.dim, cfg.ffn_dim
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    # autocast casts a matmul's input once per matmul (q, k, v: three copies; gate, up: two); with
    # parameters already in the compute dtype the norm's output is the one saved tensor
    casts = (3, 2) if a != p else (1, 1)
    norms = sum((4 + p + c * a) * d + 4 for c in casts)
    if cfg.norm_placement == "sandwich":
        norms += 2 * ((4 + a) * d + 4)
    attn = a * (2 * q + 2 * kv) + 4 * cfg.n_heads
    mlp = 4 * a * f
    return norms + attn + mlp


def op_saved_bytes(cfg: ModelConfig, a: int = 2) -> int:
    """Per token, what op-level selective checkpointing keeps of a block: the outputs of its
    matmuls (q, k, v, o; gate, up, down) and of the attention kernel (output and fp32 log-sum-exp)."""
    d, f = cfg.dim, cfg.ffn_dim
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    return a * (q + 2 * kv + d + 2 * f + d) + a * q + 4 * cfg.n_heads


def head_activation_bytes(cfg: ModelConfig, a: int = 2, p: int = 4) -> int:
    """Per token: what the chunked loss keeps until backward — each head's gradient with respect
    to its hidden states (p·d, computed in forward) and the int64 index of the tokens with a target
    (8) — plus the final norm's activations."""
    heads = 2 if cfg.mtp else 1
    return heads * (p * cfg.dim + 8) + (4 + p + a) * cfg.dim + 4


def loss_fixed_bytes(cfg: ModelConfig, tokens: int, a: int = 2, p: int = 4) -> int:
    """Per micro-batch, whatever its length, at the loss's peak (the last head's chunks): the earlier
    heads' weight gradients, kept (p·V·d each; with fp32 parameters the fp32 accumulator itself),
    the fp32 accumulator of the head being computed (4·V·d), under autocast the compute-dtype copy
    of the head weight (a·V·d), and the larger of one chunk — its fp32 logits (in place, softmax
    and gradient too), under bf16 the gradient's bf16 copy and the bf16 (V, d) product added to the
    accumulator — and, with bf16 parameters, the kept bf16 copy of the accumulator made at the end."""
    heads = 2 if cfg.mtp else 1
    vd = cfg.vocab_size * cfg.dim
    rows = min(chunk_rows(cfg.vocab_size), tokens)
    chunk = rows * cfg.vocab_size * (4 + (a if a != 4 else 0)) + (a * vd if a != 4 else 0)
    return (heads - 1) * p * vd + 4 * vd + (a * vd if a != p else 0) + max(chunk, p * vd if p != 4 else 0)


@dataclass
class MemoryPlan:
    """Bytes per rank. `activations` (`activations_ckpt` with activation checkpointing): the forward's
    peak, at the loss; `backward` (`backward_ckpt`): what the blocks keep when backward reaches
    them (with checkpointing, one block recomputed), alive beside the gradients."""

    mode: str
    world: int
    mixed_precision: str
    params: float
    grads: float
    optimizer: float
    buffers: float  # DDP buckets, autocast weight copies, FSDP all-gathered params and gradients
    activations: float
    activations_ckpt: float
    tokens: int  # micro-batch tokens (batch_size × seq_len)
    logits: float = 0.0  # the loss's share of the activations (chunked head and loss)
    backward: float = 0.0
    backward_ckpt: float = 0.0
    accumulating: bool = True  # several micro-batches a step: gradients live through the forwards

    @property
    def states(self) -> float:
        return self.params + self.grads + self.optimizer + self.buffers

    def total(self, checkpointing: bool) -> float:
        """The peak: the gradients exist (whole) only once backward ends, when the activations are
        gone — unless they accumulate over micro-batches, then they sit beside the next forward."""
        fwd, bwd = (self.activations_ckpt, self.backward_ckpt) if checkpointing else (self.activations, self.backward)
        rest = self.params + self.optimizer + self.buffers
        if self.accumulating:
            return rest + self.grads + max(fwd, bwd)
        return rest + max(fwd, self.grads + bwd)


def memory_plan(cfg: ModelConfig, mode: str, world: int, micro_batch: int, seq_len: int,
                mixed_precision: str = "bf16", checkpointing: bool | str = True, every: int = 1,
                accumulating: bool = True) -> MemoryPlan:
    """Per-rank memory of one training micro-batch of `micro_batch` × `seq_len` tokens;
    `activations_ckpt` under `checkpointing` (parallel.activation_checkpointing and
    checkpoint_every; false: whole blocks, for the hint). `accumulating`: more than one micro-batch
    per rank and step, so the gradients (sharded under FSDP2, which reduce-scatters each
    micro-batch: kollm.train.parallel.grad_sync) are alive during the later forwards."""
    if mode not in ("single", "ddp", "zero1", "fsdp"):
        raise ValueError(f"parallel.mode: unknown mode {mode!r}")
    if mixed_precision not in ("bf16", "fp32"):
        raise ValueError(f"parallel.mixed_precision: bf16 | fp32, got {mixed_precision!r}")
    w = world if mode != "single" else 1
    n = cfg.num_params()
    embed = cfg.vocab_size * cfg.dim
    # autocast caches the blocks' matmul weights; the input embedding is a lookup and the chunked
    # loss casts the LM head itself, uncached (loss_fixed_bytes)
    matmul = n - embed * (1 if cfg.tie_embeddings else 2)
    bf16 = mixed_precision == "bf16"
    a = 2 if bf16 else 4
    sharded = mode in ("zero1", "fsdp")  # FSDP2: fp32 master weights, gradients and moments in shards
    p = 2 if bf16 and sharded else 4  # FSDP2 computes in bf16 parameters; autocast keeps fp32 ones
    params = grads = 4 * n / (w if sharded else 1)
    optimizer = 8 * n / (w if sharded else 1)
    buffers = 0.0
    if mode == "ddp":
        buffers += 4 * n
    if bf16 and not sharded:
        buffers += 2 * matmul
    if sharded:
        # the unsharded gradient of one block and its reduce-scatter copy in the reduce dtype (fp32)
        buffers += (p + 4) * cfg.block_params()
    if mode == "fsdp":
        root = n - (cfg.n_layers + (1 if cfg.mtp else 0)) * cfg.block_params()
        buffers += p * root + 2 * p * cfg.block_params()
    if mode == "zero1":  # every parameter gathered once and kept from forward to backward
        buffers += p * n
    layers = cfg.n_layers + (1 if cfg.mtp else 0)
    t = micro_batch * seq_len
    block = block_activation_bytes(cfg, a, p)
    head = head_activation_bytes(cfg, a, p)
    residual = p * cfg.dim  # a block's input, kept under checkpointing
    loss = t * head + loss_fixed_bytes(cfg, t, a, p)
    acts = t * layers * block + loss
    wrapped = len(checkpointed_blocks(cfg.n_layers, cfg.mtp, checkpointing or True, every))
    kept = residual + (op_saved_bytes(cfg, a) if checkpointing == "op" else 0)
    # checkpointed blocks keep their input (op-level: and their matmul outputs), the others all of
    # theirs; in backward one checkpointed block is alive again during its recomputation, the loss's
    # buffers are gone
    blocks_ckpt = t * (wrapped * kept + (layers - wrapped) * block)
    return MemoryPlan(mode, w, mixed_precision, params, grads, optimizer, buffers, float(acts),
                      float(blocks_ckpt + loss), t, float(loss), float(t * layers * block),
                      float(blocks_ckpt + t * block), accumulating)


def checkpointing_label(checkpointing: bool | str, every: int = 1) -> str:
    if checkpointing is False:
        return "off"
    return "op" if checkpointing == "op" else ("blocks" if every == 1 else f"1/{every}")


def format_memory(rows: list[tuple[str, MemoryPlan]], device_memory: float, checkpointing: bool | str,
                  every: int = 1) -> str:
    """One line per phase; a warning line for each phase that will not fit, a "fits" line otherwise."""
    usable = device_memory * (1 - RESERVE_FRACTION)
    m0 = rows[0][1]
    lines = [f"memory per rank ({m0.mode}, {m0.world} rank{'s' if m0.world > 1 else ''}, {m0.mixed_precision}; "
             f"device {device_memory / GB:.0f} GB, {usable / GB:.0f} GB usable after a "
             f"{RESERVE_FRACTION:.0%} reserve; GB = 1e9 bytes)",
             f"{'phase':<16}{'tokens/micro':>13}{'params':>9}{'grads':>9}{'optim':>9}{'buffers':>9}"
             f"{'acts':>9}{'acts ckpt':>11}{'total':>9}{'ckpt':>7}"]
    warnings = []
    for name, m in rows:
        total = m.total(checkpointing)
        lines.append(f"{name:<16}{m.tokens:>13,}{m.params / GB:>9.1f}{m.grads / GB:>9.1f}{m.optimizer / GB:>9.1f}"
                     f"{m.buffers / GB:>9.1f}{m.activations / GB:>9.1f}{m.activations_ckpt / GB:>11.1f}"
                     f"{total / GB:>9.1f}{checkpointing_label(checkpointing, every):>7}")
        if total > usable:
            other = m.total(not checkpointing)
            acts = m.activations_ckpt if checkpointing else m.activations
            parts = sorted([("states (params, grads, optimizer, buffers)", m.states),
                            ("activations", acts - m.logits), ("the loss (head and cross entropy)", m.logits)], key=lambda x: -x[1])
            hint = (f"; with activation checkpointing {other / GB:.1f} GB" if not checkpointing and other <= usable
                    else "; largest: " + ", ".join(f"{k} {v / GB:.1f} GB" for k, v in parts[:2]))
            warnings.append(f"WARNING: phase {name}: {total / GB:.1f} GB per rank does not fit in "
                            f"{usable / GB:.0f} GB{hint}")
    if not warnings:
        lines.append(f"every phase fits: at most {max(m.total(checkpointing) for _, m in rows) / GB:.1f} GB per rank "
                     f"of {usable / GB:.0f} GB usable")
    return "\n".join(lines + warnings)


__all__ = ["memory_plan", "format_memory", "MemoryPlan", "block_activation_bytes", "head_activation_bytes", "loss_fixed_bytes",
           "op_saved_bytes", "H100_MEMORY", "GB"]
