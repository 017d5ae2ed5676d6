"""Parallelism applied from outside the model (torchtitan's `parallelize_llama` idea).

Modes under `torchrun` (gloo on CPU, NCCL on GPU, the same code):
- `single`: one process, no wrapper.
- `ddp`:    DistributedDataParallel, gradients all-reduced (averaged) across ranks.
- `zero1`:  ZeRO-1 as the Trillion report ran it (§3.6, "we sharded optimizer states only"):
            every rank holds the whole model in the compute dtype (bf16 on GPU) from its first
            forward to the end of its backward; the fp32 master weights and both AdamW moments
            are sharded, each rank updates its shard. Built on FSDP2 `fully_shard` with
            `reshard_after_forward=False` (no all-gather between forward and backward) and
            MixedPrecisionPolicy, not on a collective layer of kollm's own; gradients are
            reduce-scattered to the shard (ZeRO-2's gradient sharding, for free) in
            `parallel.reduce_dtype` (fp32 default, as torchtitan).
- `fsdp`:   FSDP2 `fully_shard` on every block, the MTP block and the root; with bf16 mixed
            precision parameters are all-gathered in bf16 and gradients reduced in fp32
            (MixedPrecisionPolicy) over the fp32 sharded master weights.
Mixed precision (`parallel.mixed_precision`, default bf16 on CUDA and fp32 on CPU): bf16 autocast
over fp32 weights and AdamW states in the other modes, the same code on CPU and CUDA.
Activation checkpointing wraps each block (recompute in backward), then `parallel.compile` (unset:
on for CUDA, off on CPU) compiles each block in place (torchtitan's per-block torch.compile: every
layer reuses one graph, and FSDP2 wraps the compiled blocks), before any sharding. Batch and
sequence are dynamic from the first compile, so a phase change (sequence length), a batch-size
ramp step or a ragged micro-batch, even of one sequence, does not recompile; `compile_stats()`
counts graphs and recompiles for the log.

AdamW weight decay follows nanoGPT / Megatron-LM: matrices (including the embedding and the
LM head) decay, norms and biases do not. (torchtitan decays every parameter.)
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import types
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from kollm.train.config import OptimSection

MODES = ("single", "ddp", "zero1", "fsdp")
SHARDED = ("zero1", "fsdp")  # FSDP2 modes: parameters are DTensors, shards only between steps


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def init_distributed() -> DistInfo:
    """Join the `torchrun` process group if there is one: NCCL with CUDA, gloo without."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun
        exit_with_launcher(rank)
    return DistInfo(rank, world, local, device)


_PROCESS_GROUPS_KEPT: list = []


@contextlib.contextmanager
def distributed_run(section=None):
    """A stage's run under `torchrun` (or alone): `init_distributed()`; when the body succeeds every
    rank waits at a barrier (rank 0 may still be exporting), and the process group is destroyed
    however the body ends. A body that raises (a diverged run) skips the barrier: the other ranks
    diverged too, or are stopped by torchrun."""
    info = init_distributed()
    try:
        if section is not None:  # `parallel`: a setting the world cannot run fails before any model is built
            check_parallel(section, info.world)
        yield info
        if info.distributed:
            dist.barrier()
    finally:
        if info.distributed:
            # The process group's last reference must die in Python, whose binding lets go of the
            # GIL before the C++ destructor joins gloo's threads. A DDP model the stage still holds
            # would otherwise drop it in its Reducer's destructor, which keeps the GIL while joining
            # a thread that needs it to free a finished collective's tensors: a rank hung at exit
            # so once, in a loaded suite run (issue 24). Kept until the interpreter ends.
            _PROCESS_GROUPS_KEPT.append(dist.group.WORLD)
            dist.destroy_process_group()


def exit_with_launcher(rank: int, poll_s: float = 0.5) -> threading.Thread:
    """Stop this rank when the process that launched it dies. torchrun stops its workers when one
    of them fails, but a SIGKILLed torchrun stops nothing: its ranks trained on and wrote 15 more
    checkpoints. A daemon thread watches the parent pid (PR_SET_PDEATHSIG would fire on the exit
    of the launcher's *thread* that forked us, not of the launcher) and ends the process at once;
    a checkpoint being written then is a `.tmp-step-*` directory `latest()` never picks."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        print(f"kollm: rank {rank}: the launcher (pid {parent}) is gone; stopping", file=sys.stderr, flush=True)
        os._exit(1)

    t = threading.Thread(target=watch, name="kollm-launcher-watch", daemon=True)
    t.start()
    return t


def _op_level_policy():
    """torchtitan's op-level selective checkpointing: keep what the matmuls and the attention kernel
    produce (the costly ops), recompute the rest (norms, RoPE, SwiGLU's elementwise ops, casts)."""
    # torch's selective-checkpoint API: loaded only with "op"
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    aten = torch.ops.aten
    keep = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.linear.default,
            aten._scaled_dot_product_efficient_attention.default, aten._scaled_dot_product_flash_attention.default,
            aten._scaled_dot_product_cudnn_attention.default,
            aten._scaled_dot_product_flash_attention_for_cpu.default}

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in keep else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def checkpointed_blocks(n_layers: int, mtp: bool, setting: bool | str, every: int = 1) -> list[int]:
    """Indices of the blocks `apply_activation_checkpointing` wraps (the MTP block is n_layers):
    none, all, or with `every` k > 1 blocks 0, k, 2k, ... (torchtitan's `layer_id % k == 0`)."""
    if setting is False:
        return []
    blocks = list(range(n_layers + (1 if mtp else 0)))
    return blocks if setting == "op" else blocks[::every]


def apply_activation_checkpointing(model: nn.Module, setting: bool | str = True, every: int = 1) -> None:
    """`parallel.activation_checkpointing`: true, whole blocks (every `every`-th one); "op",
    op-level selective checkpointing of every block. Non-reentrant either way (FSDP2, compile)."""
    # a private torch module (it moves between releases): loaded only when checkpointing is on
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper

    kw = {"context_fn": _op_level_policy} if setting == "op" else {}
    layers = model.model.layers
    mtp = getattr(model, "mtp", None) is not None
    for i in checkpointed_blocks(len(layers), mtp, setting, every):
        if i < len(layers):
            layers[i] = checkpoint_wrapper(layers[i], checkpoint_impl=CheckpointImpl.NO_REENTRANT, **kw)
        else:
            model.mtp.block = checkpoint_wrapper(model.mtp.block, checkpoint_impl=CheckpointImpl.NO_REENTRANT, **kw)


def check_parallel(section, world: int) -> None:
    """`parallel` settings that cannot work with `world` ranks: one error naming the key, before any
    model is built (the values themselves are checked with the config, TrainConfig.validate)."""
    if section.mode in ("ddp", "zero1", "fsdp") and world < 2:
        raise ValueError(f"parallel.mode {section.mode} with {world} rank: it shares the work of 2+ ranks; "
                         "use single, or launch 2+ ranks with torchrun")
    if section.mode == "single" and world > 1:
        raise ValueError(f"parallel.mode single with {world} ranks: pick ddp, zero1 or fsdp")


# Dimensions of a block's tensor arguments (x, cos, sin, dense mask) that vary: batch and sequence.
# Marked dynamic explicitly rather than `dynamic=True`, which would also make cos/sin's broadcast
# head dimension (always 1) symbolic and break the broadcast once sizes are size-oblivious.
_DYNAMIC_DIMS = ((0, (0, 1)), (1, (0, 2)), (2, (0, 2)), (3, (0, 2, 3)))
_BLOCK_MASK_TENSORS = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",
                       "q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices")
_COMPILED: dict[tuple[type, str], object] = {}  # (block class, backend) -> compiled forward, one per process


def _compiled_forward(self: nn.Module, *args, **kwargs):
    """A compiled block's `forward`. Training shapes share one graph: batch and sequence are marked
    dynamic and `backed_size_oblivious` keeps dynamo from specialising a size of 1, so the ragged
    micro-batch of a batch-size ramp step ([2, 1]), a micro-batch of 1 (trillion-7b's 32K phase) and
    a phase's new sequence length all reuse the first graph (SDPA's dense mask). With FlexAttention's
    BlockMask (CUDA) the first new sequence length and the first micro-batch of 1 compile once each
    (the mask keeps its lengths as ints; flex's kernel guards batch >= 2), then reuse. A call with
    a KV cache (decoding, with the policy in GRPO or distillation) runs eager: its growing cache is
    not a training shape."""
    cls = type(self)
    if (len(args) > 4 and args[4] is not None) or kwargs.get("cache") is not None:
        return cls.forward(self, *args, **kwargs)
    for i, dims in _DYNAMIC_DIMS:
        if i < len(args) and isinstance(args[i], torch.Tensor):
            for d in dims:
                torch._dynamo.maybe_mark_dynamic(args[i], d)
    if len(args) > 3 and hasattr(args[3], "kv_num_blocks"):  # a FlexAttention BlockMask: (B, 1, blocks[, blocks])
        mask = args[3]
        for t in (getattr(mask, name, None) for name in _BLOCK_MASK_TENSORS):
            for d in (0, 2, 3)[:t.ndim - 1] if isinstance(t, torch.Tensor) else ():
                torch._dynamo.maybe_mark_dynamic(t, d)
        for cell in getattr(mask.mask_mod, "__closure__", None) or ():  # its mask_mod's (B, T) document/language ids
            if isinstance(cell.cell_contents, torch.Tensor) and cell.cell_contents.ndim == 2:
                for d in (0, 1):
                    torch._dynamo.maybe_mark_dynamic(cell.cell_contents, d)
    fn = _COMPILED.get((cls, self._kollm_compile_backend))
    if fn is None:
        fn = _COMPILED[(cls, self._kollm_compile_backend)] = torch.compile(cls.forward,
                                                                           backend=self._kollm_compile_backend)
    from torch.fx.experimental import _config as fx_config  # torch.compile's machinery: only when compiling

    with fx_config.patch(backed_size_oblivious=True):
        return fn(self, *args, **kwargs)


def apply_compile(model: nn.Module) -> None:
    """Compile every block (and the MTP block) in place, torchtitan's per-block compile: the blocks
    share one graph (same code, parameters are inputs), FSDP2 wraps the compiled blocks and its
    hooks stay outside the graph. Only `forward` is replaced (a method bound to the block, so a
    deepcopy binds to the copy): state-dict keys, checkpoints and the Hugging Face export do not
    see it. KOLLM_COMPILE_BACKEND picks another backend (CPU tests: aot_eager, the same graph
    capture, guards and AOT autograd without inductor's code generation, which takes minutes on a
    shared 2-core box)."""
    blocks = list(model.model.layers) + ([model.mtp.block] if getattr(model, "mtp", None) is not None else [])
    _FIRST_STEP_GRAPHS.clear()  # a new model: count from its first step
    backend = os.environ.get("KOLLM_COMPILE_BACKEND", "inductor")
    for block in blocks:
        block._kollm_compile_backend = backend
        block.forward = types.MethodType(_compiled_forward, block)


_FIRST_STEP_GRAPHS: list[int] = []


def compile_stats() -> dict[str, int]:
    """Graphs dynamo has compiled in this process, and how many of them came after the first
    logged step (recompiles: a guard failed on a new shape, dtype or grad mode)."""
    from torch._dynamo.utils import counters  # loads dynamo: only when compiling

    graphs = int(counters["stats"]["unique_graphs"])
    if not _FIRST_STEP_GRAPHS:
        _FIRST_STEP_GRAPHS.append(graphs)
    return {"compiled_graphs": graphs, "recompiles": graphs - _FIRST_STEP_GRAPHS[0]}


def resolve_compile(setting: bool | None, device: torch.device) -> bool:
    """`parallel.compile`: true | false; unset, on for CUDA (where it pays: bench/gpu_check.sh) and
    off on CPU (inductor's first compile takes minutes on a small CPU box)."""
    return device.type == "cuda" if setting is None else bool(setting)


def resolve_precision(setting: str | None, device: torch.device) -> str:
    """`parallel.mixed_precision`: bf16 | fp32; unset, bf16 on CUDA and fp32 on CPU."""
    if setting is None:
        return "bf16" if device.type == "cuda" else "fp32"
    if setting not in ("bf16", "fp32"):
        raise ValueError(f"parallel.mixed_precision: bf16 | fp32, got {setting!r}")
    return setting


def uses_autocast(setting: str | None, mode: str, device: torch.device) -> bool:
    """Whether forwards run under bf16 autocast: bf16 precision outside FSDP (FSDP2 casts the
    parameters itself). Every forward whose log-probabilities meet the policy's (DPO's reference,
    GRPO's old policy and reference) must take the same answer, or the ratio at step 0 is not 1."""
    return resolve_precision(setting, device) == "bf16" and mode not in SHARDED


def parallelize(model: nn.Module, mode: str, info: DistInfo, activation_checkpointing: bool | str = False,
                mixed_precision: str | None = None, compile: bool = False, checkpoint_every: int = 1,
                reduce_dtype: str = "fp32") -> nn.Module:
    """Wrap `model` for `mode`; returns the module the training loop calls."""
    if mode not in MODES:
        raise ValueError(f"parallel.mode: unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode != "single" and not info.distributed:
        raise ValueError(f"parallel.mode {mode!r} needs torch.distributed: launch with torchrun")
    if mode == "single" and info.world > 1:
        raise ValueError(f"parallel.mode 'single' with WORLD_SIZE={info.world}: pick ddp, zero1 or fsdp")
    if activation_checkpointing:
        apply_activation_checkpointing(model, activation_checkpointing, checkpoint_every)
    if compile:
        apply_compile(model)
    if mode == "single":
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP  # each mode loads its own wrapper

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # each mode loads its own wrapper

    if reduce_dtype not in ("fp32", "bf16"):
        raise ValueError(f"parallel.reduce_dtype: fp32 | bf16, got {reduce_dtype!r}")
    reduce = torch.float32 if reduce_dtype == "fp32" else torch.bfloat16
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=reduce) \
        if resolve_precision(mixed_precision, info.device) == "bf16" else MixedPrecisionPolicy()
    # zero1: the gathered compute-dtype weights stay from forward to backward (ZeRO-1's whole bf16
    # model per rank); fsdp frees each block's after its forward and gathers it again in backward
    keep = mode == "zero1"
    blocks = list(model.model.layers) + ([model.mtp.block] if getattr(model, "mtp", None) is not None else [])
    for block in blocks:
        fully_shard(block, mp_policy=mp, reshard_after_forward=not keep)
    fully_shard(model, mp_policy=mp, reshard_after_forward=not keep)
    return model


def materialize(model: nn.Module, device: torch.device) -> None:
    """Allocate a model built on the meta device (after sharding: each rank only its shard) and
    initialise it; how an 8B model is trained under FSDP without a full copy per rank."""
    model.to_empty(device=device)
    with torch.no_grad():
        unwrap(model).reset_parameters()


def unwrap(model: nn.Module) -> nn.Module:
    """The CausalLM under a DDP wrapper (FSDP2 shards in place, nothing to unwrap)."""
    return model.module if hasattr(model, "module") else model


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for _, p in unwrap(model).named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    # "decays" marks the group a phase's weight decay applies to, even when the base decay is 0.
    return [{"params": decay, "weight_decay": weight_decay, "decays": True},
            {"params": no_decay, "weight_decay": 0.0, "decays": False}]


def build_optimizer(model: nn.Module, mode: str, cfg: OptimSection) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    kwargs = {"lr": cfg.lr, "betas": tuple(cfg.betas), "eps": cfg.eps}
    # fused AdamW (one kernel over all parameters) where torch has it: on this CPU 25 ms a step for
    # small-20m's 19M parameters against 105 ms for the default multi-tensor (foreach) update
    devices = {p.device.type for g in groups for p in g["params"]}
    if devices and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for g in groups for p in g["params"]):
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, **kwargs)  # under zero1/fsdp over the DTensor shards: each rank its own


def set_weight_decay(opt: torch.optim.Optimizer, weight_decay: float) -> None:
    """Phase change (anneal: 0.1 → 0.033) on the decaying group."""
    for g in opt.param_groups:
        if g.get("decays", g["weight_decay"] != 0.0):
            g["weight_decay"] = weight_decay


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def grad_sync(model: nn.Module, mode: str, sync: bool):
    """Context for one micro-batch's backward. DDP reduces only when `sync` (the last micro-batch of
    an accumulation; no_sync keeps the local gradients, which exist whole anyway). FSDP2 (zero1,
    fsdp) reduce-scatters every micro-batch into the sharded gradients, as torchtitan does:
    without sync it would keep every parameter's unsharded gradient in fp32 until the last one,
    4 bytes × N per rank (31 GB for trillion-7b), more than all the sharded states together."""
    if mode == "ddp" and not sync:
        return model.no_sync()
    return contextlib.nullcontext()


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Global gradient norm (clipped to max_norm if > 0); works for DTensor (FSDP2) gradients."""
    params = [p for p in unwrap(model).parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
    if hasattr(norm, "full_tensor"):  # FSDP2: each rank holds a partial norm
        norm = norm.full_tensor()
    if max_norm > 0:
        # takes the parameters (it scales each p.grad); given the gradients it silently does nothing
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm, foreach=True)
    return norm


__all__ = ["DistInfo", "init_distributed", "distributed_run", "parallelize", "apply_compile", "compile_stats", "resolve_compile", "resolve_precision", "uses_autocast", "build_optimizer", "clip_grad_norm", "MODES",
           "apply_activation_checkpointing", "checkpointed_blocks", "check_parallel", "SHARDED"]
