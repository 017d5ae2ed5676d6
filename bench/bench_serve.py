"""`kollm serve` throughput: the same requests from 8 concurrent clients against one at a time
(goal ≥ 3× tokens/s: continuous batching), and against transformers' `generate` serving them
sequentially in-process (the naive way to put a model behind an endpoint).

One random checkpoint (preset `small-20m` by default, exported with save_hf, a byte-level BPE
trained on kollm's demo corpus so every id decodes) is served by a real `kollm serve` process on
127.0.0.1 (`kollm.serve.testing.running_server`). Each request is a /v1/completions call with a
random token-id prompt of --prompt tokens, greedy, `ignore_eos`, --new tokens, so every run
produces the same number of tokens; all three arms must return identical tokens. CPU, fp32, one
torch thread in the server and in the transformers arm; the arms alternate over --rounds and each
keeps its best round.

    .venv/bin/python bench/bench_serve.py [--preset small-20m --requests 32 --clients 8 --prompt 64 --new 64]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch


def build_checkpoint(preset: str, out: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from kollm.demo_corpus import write_demo_corpus
    from kollm.model import build_model, get_preset
    from kollm.model.hf import save_hf

    corpus = write_demo_corpus(out / "corpus", n_docs=400)
    texts = [json.loads(line)["text"] for f in sorted(corpus.rglob("*.jsonl")) for line in f.open(encoding="utf-8")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=4096, special_tokens=["<pad>", "<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(0)
    cfg = get_preset(preset)
    model = build_model(cfg.replace(vocab_size=len(tokenizer)))
    return save_hf(model, out / "ckpt", tokenizer=tokenizer)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small-20m")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    from openai import OpenAI
    from transformers import AutoModelForCausalLM

    from kollm.serve.testing import running_server

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_checkpoint(args.preset, Path(tmp))
        vocab = json.loads((ckpt / "config.json").read_text())["vocab_size"]
        g = torch.Generator().manual_seed(1)
        prompts = [[1] + torch.randint(3, vocab, (args.prompt - 1,), generator=g).tolist()
                   for _ in range(args.requests)]
        results = {"preset": args.preset, "requests": args.requests, "clients": args.clients, "rounds": args.rounds,
                   "prompt_tokens": args.prompt, "new_tokens": args.new, "threads": args.threads}
        with running_server(ckpt) as server:
            client = OpenAI(base_url=server.base_url, api_key="none", max_retries=0, timeout=600)

            def one(p: list[int]) -> list[int]:
                r = client.completions.create(model=server.model, prompt=p, max_tokens=args.new, temperature=0,
                                              logprobs=0, extra_body={"ignore_eos": True,
                                                                      "return_tokens_as_token_ids": True})
                return [int(t.split(":")[1]) for t in r.choices[0].logprobs.tokens]

            one(prompts[0])  # warm-up
            hf_model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
            times: dict[str, list[float]] = {"sequential": [], "concurrent": [], "hf_generate": []}
            rows = steps = 0
            for _ in range(args.rounds):  # arms alternate so machine noise hits each
                t = time.perf_counter()
                seq = [one(p) for p in prompts]
                times["sequential"].append(time.perf_counter() - t)
                h0 = server.health()
                t = time.perf_counter()
                with ThreadPoolExecutor(args.clients) as pool:
                    conc = list(pool.map(one, prompts))
                times["concurrent"].append(time.perf_counter() - t)
                h1 = server.health()
                rows, steps = rows + h1["row_steps"] - h0["row_steps"], steps + h1["steps"] - h0["steps"]
                t = time.perf_counter()
                hf = []
                with torch.no_grad():
                    for p in prompts:
                        x = torch.tensor([p])
                        out = hf_model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=args.new,
                                                min_new_tokens=args.new, do_sample=False, eos_token_id=None,
                                                pad_token_id=0)
                        hf.append(out[0, len(p):].tolist())
                times["hf_generate"].append(time.perf_counter() - t)
    tokens = args.requests * args.new
    rate = {k: tokens / min(v) for k, v in times.items()}  # best round of each arm
    results.update({f"{k}_tok_s": round(v, 1) for k, v in rate.items()})
    results["concurrent_over_sequential"] = round(rate["concurrent"] / rate["sequential"], 2)
    results["concurrent_over_hf_generate"] = round(rate["concurrent"] / rate["hf_generate"], 2)
    results["mean_decode_batch"] = round(rows / max(1, steps), 2)
    results["identical"] = {"concurrent_vs_sequential": f"{sum(a == b for a, b in zip(conc, seq))}/{len(seq)}",
                            "hf_vs_sequential": f"{sum(a == b for a, b in zip(hf, seq))}/{len(seq)}"}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
