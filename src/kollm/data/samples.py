"""`kollm dpo sample --prompts P --out SAMPLES (--model DIR | --endpoint URL) --k K`: the policy's
own responses for DPO pairs (Trillion 7B §4: on-policy responses of the SFT model paired with
Tulu 3's off-policy ones; then `kollm dpo pairs --responses SAMPLES OTHER...`).

K samples per prompt, one output row each: `{id, sample, response}` (`id` names the prompt, as
`kollm dpo pairs` reads it). In process (`--model`: kollm's batched KV-cache generation, the
chat template, seeded per batch — `sample_round`, which online DPO samples its rounds with) or through an
OpenAI-compatible `/v1/chat/completions` endpoint (`--endpoint`: vLLM, SGLang, `kollm serve`;
one request per sample with its own seed, `--concurrency` at once). Resumable: rows already in
SAMPLES are kept and only the missing samples are generated (a batch cut short by a crash is
generated again). Progress goes to stderr. A request that times out or fails is counted per
prompt and reported, not fatal; rerunning the command asks again for exactly those.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kollm.data.chat import load_tokenizer, render_prompt, stop_token_ids
from kollm.jsonrows import loads_row

if TYPE_CHECKING:
    import torch


@dataclass
class SampleConfig:
    k: int = 4
    max_new_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    gen_batch: int = 32  # sequences per generation call (in process) / requests per written chunk
    seed: int = 0
    system_prompt: str | None = None


def _messages(prompt, system: str | None) -> list[dict]:
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system and not (msgs and msgs[0].get("role") == "system"):
        msgs = [{"role": "system", "content": system}, *msgs]
    return msgs


class EndpointSampler:
    """One chat completion per sample; failures (timeouts, HTTP errors, no text) → None, with why."""

    def __init__(self, base_url: str, model: str = "default", api_key: str | None = None, timeout: float = 600.0,
                 concurrency: int = 8):
        self.url = base_url.rstrip("/").removesuffix("/v1") + "/v1/chat/completions"
        self.model, self.api_key, self.timeout, self.concurrency = model, api_key, timeout, concurrency

    def one(self, messages: list[dict], cfg: SampleConfig, seed: int) -> tuple[str | None, str | None]:
        body = {"model": self.model, "messages": messages, "max_tokens": cfg.max_new_tokens,
                "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": seed}
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.api_key}"}
                                                         if self.api_key else {})}
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                out = json.loads(resp.read())
            text = out["choices"][0]["message"]["content"]
        except TimeoutError:
            return None, "timeout"
        except urllib.error.HTTPError as e:
            return None, f"http_{e.code}"
        except urllib.error.URLError as e:
            return None, "timeout" if isinstance(e.reason, TimeoutError) else "unreachable"
        except (ValueError, KeyError, IndexError, TypeError):
            return None, "bad_response"
        return (text, None) if isinstance(text, str) else (None, "bad_response")


def _done_rows(path: Path) -> list[dict]:
    """Sample rows already written (`complete_rows`), the file created when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = complete_rows(path, lambda row: isinstance(row, dict) and "id" in row and "sample" in row)
    path.touch()
    return rows


def append_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def complete_rows(path: Path, keep: Callable[[object], bool] = lambda row: True) -> list[dict]:
    """The rows already written that `keep` accepts, the file rewritten with only them; a line cut
    short by a crash (and everything after it) is dropped, so a resumed run writes it again."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = loads_row(line)
            except ValueError:
                break
            if keep(row):
                rows.append(row)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return rows


def sample_round(policy_dir: str, tokenizer, prompts: list[tuple[str, dict]], on, seed: int, path: Path,
                 device: torch.device, progress=None) -> list[dict]:
    """k samples per prompt, `on.gen_batch` sequences per generation call, appended per batch;
    `progress(done, total)` after each batch (`kollm dpo sample`)."""
    import torch  # here, with the model: sampling through an endpoint needs neither

    from kollm.model.generate import GenerationConfig, generate
    from kollm.model.hf import load_hf

    jobs = [(pid, row, j) for pid, row in prompts for j in range(on.k)]
    done = complete_rows(path)
    if len(done) >= len(jobs):
        return done[:len(jobs)]
    n_done_batches = len(done) // on.gen_batch
    done = done[:n_done_batches * on.gen_batch]  # a partly written batch is generated again
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in done), encoding="utf-8")
    model = load_hf(policy_dir, device=device, dtype=torch.float32)
    stop = stop_token_ids(tokenizer)
    for b in range(n_done_batches, math.ceil(len(jobs) / on.gen_batch)):
        chunk = jobs[b * on.gen_batch:(b + 1) * on.gen_batch]
        cfg = GenerationConfig(max_new_tokens=on.max_new_tokens, do_sample=True, temperature=on.temperature,
                               top_p=on.top_p, seed=seed * 1_000_003 + b, stop_token_ids=stop)
        ids = [render_prompt(tokenizer, _messages(row["prompt"], None)) for _, row, _ in chunk]
        outs = generate(model, ids, cfg)
        append_rows(path, [{"id": pid, "sample": j, "response": tokenizer.decode(o, skip_special_tokens=True).strip()}
                       for (pid, _, j), o in zip(chunk, outs)])
        if progress is not None:
            progress(min(len(jobs), (b + 1) * on.gen_batch), len(jobs))
    del model
    return complete_rows(path)


def sample_endpoint(sampler: EndpointSampler, prompts: list[tuple[str, dict]], cfg: SampleConfig, out: Path,
                    log=print) -> tuple[int, dict[str, Counter]]:
    """The missing samples through the endpoint, written chunk by chunk; returns (rows written in
    total, failures per prompt id by reason)."""
    done = {(str(r["id"]), int(r["sample"])) for r in _done_rows(out)}
    jobs = [(i, pid, row, j) for i, (pid, row) in enumerate(prompts) for j in range(cfg.k) if (pid, j) not in done]
    failed: dict[str, Counter] = {}
    total = len(prompts) * cfg.k
    with ThreadPoolExecutor(max_workers=max(1, sampler.concurrency)) as pool:
        for s in range(0, len(jobs), cfg.gen_batch):
            chunk = jobs[s:s + cfg.gen_batch]
            # the seed names the sample (prompt position, sample index), not the order of asking
            results = pool.map(lambda job: sampler.one(_messages(job[2]["prompt"], cfg.system_prompt), cfg,
                                                       cfg.seed * 1_000_003 + job[0] * cfg.k + job[3]), chunk)
            rows = []
            for (_, pid, _, j), (text, why) in zip(chunk, results):
                if why is not None:
                    failed.setdefault(pid, Counter())[why] += 1
                else:
                    rows.append({"id": pid, "sample": j, "response": text.strip()})
            append_rows(out, rows)
            done |= {(r["id"], r["sample"]) for r in rows}
            log(f"kollm dpo sample: {len(done)}/{total} samples ({sum(map(sum, map(Counter.values, failed.values())))}"
                " failed)")
    return len(done), failed


def sample_local(model_dir: str, prompts: list[tuple[str, dict]], cfg: SampleConfig, out: Path, log=print) -> int:
    """In process: sample_round (per-batch seeds, resumable by batch)."""
    import torch

    tok = load_tokenizer(model_dir)
    rows = [(pid, {**row, "prompt": _messages(row["prompt"], cfg.system_prompt)}) for pid, row in prompts]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    done = sample_round(model_dir, tok, rows, cfg, cfg.seed, out, device,
                        progress=lambda n, t: log(f"kollm dpo sample: {n}/{t} samples"))
    return len(done)


def main(argv: list[str]) -> int:
    from kollm.data.pairs import read_prompts

    p = argparse.ArgumentParser(prog="kollm dpo sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", required=True, help="prompt rows {id, prompt (string or messages)} (JSONL/Parquet)")
    p.add_argument("--out", required=True, help="samples (JSONL): {id, sample, response} per sample; resumed")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a checkpoint directory (Hugging Face layout): generate in process")
    src.add_argument("--endpoint", help="an OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--endpoint-model", default="default", help="the model name sent to the endpoint")
    p.add_argument("--api-key-env", help="environment variable holding the endpoint's API key")
    p.add_argument("--k", type=int, default=4, help="samples per prompt (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=32, help="sequences per generation call / requests per chunk")
    p.add_argument("--concurrency", type=int, default=8, help="endpoint requests at once")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per endpoint request")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--system-prompt", help="a system turn before every prompt (chat template)")
    args = p.parse_args(argv)
    if args.k < 1:
        raise ValueError("--k must be >= 1")
    if not Path(args.prompts).exists():
        raise FileNotFoundError(f"{args.prompts}: no such file")
    table, bad = read_prompts(args.prompts)
    if not table:
        raise ValueError(f"{args.prompts}: no usable prompt rows ({dict(bad)})")
    prompts = list(table.items())
    cfg = SampleConfig(args.k, args.max_new_tokens, args.temperature, args.top_p, args.batch, args.seed,
                       args.system_prompt)
    out = Path(args.out)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    failed: dict[str, Counter] = {}
    if args.endpoint:
        import os

        key = os.environ.get(args.api_key_env) if args.api_key_env else None
        n, failed = sample_endpoint(EndpointSampler(args.endpoint, args.endpoint_model, key, args.timeout,
                                                    args.concurrency), prompts, cfg, out, log)
    else:
        n = sample_local(args.model, prompts, cfg, out, log)
    report = {"prompts": len(prompts), "samples": n, "wanted": len(prompts) * args.k,
              **{f"bad_prompt_rows_{k}": v for k, v in bad.items()}}
    if failed:
        reasons = Counter()
        for c in failed.values():
            reasons.update(c)
        report |= {"failed_samples": sum(reasons.values()), "failed_prompts": len(failed),
                   **{f"failed_{k}": v for k, v in reasons.items()},
                   "failed_by_prompt": {pid: dict(c) for pid, c in list(failed.items())[:20]}}
        log(f"kollm dpo sample: {sum(reasons.values())} samples of {len(failed)} prompts failed "
            f"({dict(reasons)}); run the command again to ask for them")
    print(json.dumps(report, ensure_ascii=False))
    return 0


__all__ = ["EndpointSampler", "SampleConfig", "main", "sample_endpoint", "sample_local"]
