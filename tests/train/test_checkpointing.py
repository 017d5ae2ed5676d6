"""Activation checkpointing policies (parallel.activation_checkpointing, checkpoint_every): the
same gradients as no checkpointing, the blocks they wrap, what the memory plan counts for each,
and bad settings as one error naming the key."""

from __future__ import annotations

import copy

import pytest
import torch

from kollm.model.config import get_preset
from kollm.model.transformer import build_model
from kollm.train.config import config_from_dict
from kollm.train.memory import block_activation_bytes, memory_plan, op_saved_bytes
from kollm.train.parallel import apply_activation_checkpointing, check_parallel, checkpointed_blocks

CFG = get_preset("tiny-sandwich-mtp")


def _grads(model, ids):
    model.train()
    out = model(ids)
    (out.logits.float().logsumexp(-1).mean() + out.mtp_logits.float().pow(2).mean()).backward()
    return {n.replace("_checkpoint_wrapped_module.", ""): p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("setting,every", [(True, 1), (True, 2), ("op", 1)], ids=["blocks", "every-2", "op"])
def test_policies_give_the_gradients_of_no_checkpointing(setting, every):
    torch.manual_seed(0)
    ref = build_model(CFG)
    model = copy.deepcopy(ref)
    apply_activation_checkpointing(model, setting, every)
    wrapped = [i for i, b in enumerate([*model.model.layers, model.mtp.block]) if "Checkpoint" in type(b).__name__]
    assert wrapped == checkpointed_blocks(CFG.n_layers, True, setting, every)
    ids = torch.randint(0, CFG.vocab_size, (2, 24))
    a, b = _grads(ref, ids), _grads(model, ids)
    assert a.keys() == b.keys()
    for name, g in a.items():  # recomputation reruns the same ops on the same inputs
        torch.testing.assert_close(b[name], g, rtol=1e-6, atol=1e-9, msg=name)


def test_checkpointed_blocks():
    assert checkpointed_blocks(4, False, False) == []
    assert checkpointed_blocks(4, True, True) == [0, 1, 2, 3, 4]  # 4: the MTP block
    assert checkpointed_blocks(6, False, True, 2) == [0, 2, 4]
    assert checkpointed_blocks(3, False, "op") == [0, 1, 2]


def test_plan_per_policy():
    """Forward: t·(wrapped·kept + unwrapped·block) + the loss; backward: the same blocks + one
    block recomputed (the loss's buffers gone), per policy."""
    t, a, p = 2 * 64, 2, 4
    block, res = block_activation_bytes(CFG, a, p), p * CFG.dim
    n = CFG.n_layers + 1  # with the MTP block
    plans = {k: memory_plan(CFG, "single", 1, 2, 64, "bf16", *k) for k in [(True, 1), (True, 2), ("op", 1)]}
    loss = plans[(True, 1)].logits
    assert plans[(True, 1)].activations_ckpt == t * n * res + loss
    assert plans[(True, 1)].backward_ckpt == t * (n * res + block)
    wrapped = len(range(0, n, 2))
    assert plans[(True, 2)].activations_ckpt == t * (wrapped * res + (n - wrapped) * block) + loss
    assert plans[(True, 2)].backward_ckpt == t * (wrapped * res + (n - wrapped) * block + block)
    assert plans[("op", 1)].activations_ckpt == t * n * (res + op_saved_bytes(CFG, a)) + loss
    assert plans[(True, 1)].activations_ckpt < plans[("op", 1)].activations_ckpt < plans[(True, 1)].activations


def _cfg(**parallel):
    return {"name": "x", "model": {"preset": "tiny"}, "phases": [{"name": "a", "steps": 1}], "parallel": parallel}


@pytest.mark.parametrize("parallel,key", [
    ({"activation_checkpointing": "attention"}, "parallel.activation_checkpointing: false | true | op"),
    ({"activation_checkpointing": "op", "checkpoint_every": 2}, "parallel.checkpoint_every: 2 needs"),
    ({"activation_checkpointing": True, "checkpoint_every": 0}, "parallel.checkpoint_every must be a positive"),
])
def test_bad_settings_name_the_key(parallel, key):
    with pytest.raises(ValueError, match=key.replace("|", r"\|")):
        config_from_dict(_cfg(**parallel))


def test_modes_that_need_ranks():
    sec = config_from_dict(_cfg(mode="zero1")).parallel
    with pytest.raises(ValueError, match="parallel.mode zero1 with 1 rank"):
        check_parallel(sec, 1)
    check_parallel(sec, 2)
    with pytest.raises(ValueError, match="parallel.mode single with 4 ranks"):
        check_parallel(config_from_dict(_cfg()).parallel, 4)


def test_op_level_keeps_the_matmul_outputs():
    """Backward's matmuls, counted: whole-block checkpointing reruns the forward's matmuls of every
    block, op-level none of them (their outputs were kept), no checkpointing none either."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default):
                Count.n += 1
            return func(*args, **(kwargs or {}))

    ids = torch.randint(0, CFG.vocab_size, (2, 16))
    counts = {}
    for setting in (False, True, "op"):
        torch.manual_seed(0)
        model = build_model(CFG).train()
        if setting:
            apply_activation_checkpointing(model, setting)
        out = model(ids)
        loss = out.logits.float().logsumexp(-1).mean() + out.mtp_logits.float().pow(2).mean()
        Count.n = 0
        with Count():
            loss.backward()
        counts[setting] = Count.n
    per_block = 7  # q, k, v, o, gate, up, down
    assert counts[True] == counts[False] + per_block * CFG.n_layers + per_block  # + the MTP block
    assert counts["op"] == counts[False]
