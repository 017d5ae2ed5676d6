"""Forward+backward tokens/s of kollm's decoder against transformers' LlamaForCausalLM.

Same config (preset `small-20m`, ~19M parameters), same weights, same batches, same process;
rounds alternate between the two so machine noise hits both. CPU, fp32.

    .venv/bin/python bench/bench_model.py [--batch 8 --seq 512 --rounds 5 --threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from kollm.model import build_model, get_preset


def hf_twin(model) -> LlamaForCausalLM:
    c = model.config
    cfg = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.ffn_dim, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, rms_norm_eps=c.norm_eps,
        rope_theta=c.rope_theta, max_position_embeddings=c.max_seq_len, tie_word_embeddings=c.tie_embeddings,
        attn_implementation="sdpa",
    )
    hf = LlamaForCausalLM(cfg)
    hf.load_state_dict(model.state_dict(), strict=True)
    return hf


def step_kollm(model, ids):
    logits = model(ids).logits
    F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()


def step_hf(model, ids):
    logits = model(input_ids=ids).logits
    F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).backward()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = build_model(get_preset("small-20m"))
    theirs = hf_twin(ours)
    print(f"params: {ours.num_params():,}  batch {args.batch} x seq {args.seq}  threads {args.threads}")
    batches = [torch.randint(0, ours.config.vocab_size, (args.batch, args.seq)) for _ in range(args.steps)]
    # Same function: check before timing.
    with torch.no_grad():
        diff = (ours(batches[0][:1]).logits - theirs(input_ids=batches[0][:1]).logits).abs().max().item()
    print(f"max |logit diff| vs transformers: {diff:.2e}")
    times = {"kollm": [], "transformers": []}
    for model, fn in ((ours, step_kollm), (theirs, step_hf)):
        fn(model, batches[0])  # warm-up
        model.zero_grad(set_to_none=True)
    for _ in range(args.rounds):
        for name, model, fn in (("kollm", ours, step_kollm), ("transformers", theirs, step_hf)):
            t0 = time.perf_counter()
            for ids in batches:
                fn(model, ids)
                model.zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - t0)
    tokens = args.steps * args.batch * args.seq
    best = {k: tokens / min(v) for k, v in times.items()}
    for k, v in best.items():
        print(f"{k:>12}: {v:,.0f} tokens/s (best of {args.rounds} rounds)")
    print(f"ratio kollm / transformers: {best['kollm'] / best['transformers']:.2f}x")


if __name__ == "__main__":
    main()
