"""`kollm distill`'s data (DistiLLM, Ko et al. 2024; DNA 1.0 §4.5): rows rendered with the student's
chat template (ChatExamples), the teacher's top-k where they are not computed here (StoredTopK from
`kollm distill precompute`, ServerTopK from a vLLM server), the trainer's data source with the
adaptive off-policy schedule (DistillData; kollm.train.distill's docstring says how), the held-out
batches (ValidationData) and the demo's prompt/completion rows (demo_rows)."""

from __future__ import annotations

import hashlib
import json
import random
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from kollm.data import IGNORE
from kollm.data.chat import RowErrors, data_files, iter_rows, read_conversations, render, render_prompt
from kollm.model.generate import GenerationConfig, generate
from kollm.train.distill_config import DistillConfig
from kollm.train.parallel import unwrap

STORED_FILES = ("ids.npy", "logp.npy", "tail.npy", "offsets.npy", "meta.json")


# -- rows → examples -----------------------------------------------------------------------------
@dataclass
class Example:
    ids: list[int]
    labels: list[int]  # aligned with ids (the loss shifts), IGNORE outside assistant tokens
    prompt: list[int]  # the conversation before the last assistant turn + the generation header


class ChatExamples:
    """All usable rows of a file (or a directory of files), rendered and cut to `max_len` tokens."""

    def __init__(self, spec: str | Path, tokenizer, max_len: int):
        self.path = Path(spec)
        self.errors = RowErrors()
        self.examples: list[Example] = []
        for file, line, _, messages in read_conversations(spec, self.errors):
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            ids, trained = render(tokenizer, messages[:last + 1])
            prompt = render_prompt(tokenizer, messages[:last])
            ids, trained = ids[:max_len], trained[:max_len]
            if not any(trained[1:]):
                self.errors.add("no_response_within_max_len", file, line)
                continue
            self.examples.append(Example(ids, [t if m else IGNORE for t, m in zip(ids, trained)], prompt[:max_len - 1]))
        if not self.examples:
            raise ValueError(f"{self.path}: no usable rows ({self.errors.summary()})")

    def report(self) -> str:
        s = f"{self.path}: {len(self.examples)} rows"
        return s + (f"; {self.errors.summary()}" if self.errors.total else "")


def file_digest(spec: str | Path) -> str:
    """sha256 over the contents of the data file(s), in kollm.data.chat.data_files order."""
    h = hashlib.sha256()
    for path in data_files(spec):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def vocab_digest(tokenizer) -> str:
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


# -- stored teacher top-k ------------------------------------------------------------------------
class StoredTopK:
    """Top-k teacher log-probs of every response target of one data file: flat (N, k) arrays in
    the order of ChatExamples, `offsets[i]` the first target of example i (memory-mapped)."""

    def __init__(self, root: str | Path, data_path: str | Path, tokenizer, max_len: int, n_examples: int):
        self.root = Path(root)
        missing = [f for f in STORED_FILES if not (self.root / f).is_file()]
        if missing:
            raise FileNotFoundError(f"teacher.stored: {self.root} lacks {', '.join(missing)} "
                                    "(write it with `kollm distill precompute`)")
        meta = json.loads((self.root / "meta.json").read_text())
        want = {"data_sha256": file_digest(data_path), "vocab_sha256": vocab_digest(tokenizer), "max_len": max_len,
                "examples": n_examples}
        for key, value in want.items():
            if meta.get(key) != value:
                raise ValueError(f"teacher.stored: {self.root}/meta.json {key} is {meta.get(key)!r} but this run has "
                                 f"{value!r} ({data_path}); precompute again for this data, tokenizer and seq_len")
        self.meta = meta
        self.ids = np.load(self.root / "ids.npy", mmap_mode="r")
        self.logp = np.load(self.root / "logp.npy", mmap_mode="r")
        self.tail = np.load(self.root / "tail.npy", mmap_mode="r")
        self.offsets = np.load(self.root / "offsets.npy")

    def rows(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.ids[a:b], self.logp[a:b], self.tail[a:b]


class ServerTopK:
    """Teacher top-k of generated samples from a vLLM server: `/v1/completions` with the sample's
    token ids as the prompt, `max_tokens` 1 and `prompt_logprobs` k (vLLM's extension), whose entry
    t + 1 is the teacher's distribution after tokens 0..t. The k most likely entries are kept (vLLM
    adds the actual token when it is outside them); the tail is the log of the mass left, as
    `teacher_topk` computes it. `rows(i)` has StoredTopK's shape, for `collate`."""

    def __init__(self, url: str, k: int, model: str = "default", timeout: float = 600.0):
        self.url = url.rstrip("/").removesuffix("/v1") + "/v1/completions"
        self.k, self.model, self.timeout = k, model, timeout
        self.ids = np.zeros((0, k), dtype=np.int32)  # collate reads k from its shape
        self._rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def _prompt_logprobs(self, ids: list[int]) -> list:
        body = {"model": self.model, "prompt": ids, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": self.k}
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                out = json.loads(resp.read())["choices"][0]["prompt_logprobs"]
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            raise RuntimeError(f"teacher.server {self.url}: no prompt_logprobs ({e}); it must be a vLLM "
                               "server of the teacher") from None
        if not isinstance(out, list) or len(out) != len(ids):
            raise RuntimeError(f"teacher.server {self.url}: prompt_logprobs for {len(out or [])} of {len(ids)} tokens")
        return out

    def score(self, examples: list[Example]) -> None:
        """Ask for the teacher's top-k at every target of each example (`rows(i)` afterwards)."""
        self._rows = []
        for e in examples:
            plp = self._prompt_logprobs(e.ids)
            pos = [t for t in range(len(e.ids) - 1) if e.labels[t + 1] != IGNORE]
            ids = np.zeros((len(pos), self.k), dtype=np.int32)
            logp = np.full((len(pos), self.k), -1e4, dtype=np.float32)
            tail = np.zeros(len(pos), dtype=np.float32)
            for r, t in enumerate(pos):
                top = sorted(((int(tok), float(v["logprob"] if isinstance(v, dict) else v))
                              for tok, v in (plp[t + 1] or {}).items()), key=lambda x: -x[1])[:self.k]
                for c, (tok, lp) in enumerate(top):
                    ids[r, c], logp[r, c] = tok, lp
                mass = float(np.exp(np.asarray([lp for _, lp in top], dtype=np.float64)).sum())
                tail[r] = np.log(max(1.0 - mass, 1e-30))
            self._rows.append((ids, logp, tail))

    def rows(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._rows[i]


def collate(examples: list[Example], stored: StoredTopK | None = None, indices: list[int] | None = None
            ) -> dict[str, torch.Tensor]:
    """Right-padded (pad id 0, label IGNORE; causal attention never lets a real token see a pad)."""
    T = max(len(e.ids) for e in examples)
    ids = torch.zeros(len(examples), T, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for b, e in enumerate(examples):
        ids[b, :len(e.ids)] = torch.tensor(e.ids)
        labels[b, :len(e.labels)] = torch.tensor(e.labels)
    batch = {"input_ids": ids, "labels": labels}
    if stored is not None:
        k = stored.ids.shape[1]
        t_ids = torch.zeros(len(examples), T, k, dtype=torch.int32)
        t_logp = torch.zeros(len(examples), T, k)
        t_tail = torch.zeros(len(examples), T)
        has_target = labels[:, 1:] != IGNORE  # logits position t predicts labels[t + 1]
        for b, i in enumerate(indices):
            r_ids, r_logp, r_tail = stored.rows(i)
            pos = has_target[b].nonzero().squeeze(-1)
            if len(pos) != len(r_ids):
                raise ValueError(f"teacher.stored: example {i} has {len(pos)} targets but {len(r_ids)} stored rows")
            t_ids[b, pos] = torch.tensor(np.asarray(r_ids))
            t_logp[b, pos] = torch.tensor(np.asarray(r_logp))
            t_tail[b, pos] = torch.tensor(np.asarray(r_tail))
        batch |= {"teacher_ids": t_ids, "teacher_logp": t_logp, "teacher_tail": t_tail}
    return batch


# -- the data source -----------------------------------------------------------------------------
class DistillData:
    """Trainer data source: dataset batches, or (adaptive off-policy) student generations."""

    def __init__(self, examples: ChatExamples, cfg: DistillConfig, student: nn.Module | None, stop_ids: list[int],
                 stored: StoredTopK | None = None, seed: int = 0, rank: int = 0, world: int = 1,
                 server: ServerTopK | None = None):
        d = cfg.distill
        self.examples, self.stored, self.student, self.stop_ids = examples.examples, stored, student, stop_ids
        self.row_errors = examples.errors  # the trainer reports them (bad_rows.json, end of the run)
        self.d, self.seed, self.rank, self.world, self.server = d, seed, rank, world, server
        # stored top-k cover the dataset's responses only: generated ones need the teacher online or served
        self.off_policy = d.off_policy and (stored is None or server is not None) and student is not None
        self.max_len = max(len(e.ids) for e in self.examples)
        self.epoch, self.cursor, self.order = 0, 0, self._order(0)
        self.rng = random.Random(seed * 7919 + rank)
        # The off-policy draw is the same on every rank (φ is too: validation is all-reduced), so under
        # fsdp (and zero1, FSDP2 underneath: each forward is a collective) all ranks generate together,
        # `lockstep`: a fixed number of decode steps on every rank.
        self.draw = random.Random(seed * 7919 - 1)
        self.lockstep = cfg.train.parallel.mode in ("fsdp", "zero1") and world > 1
        if d.off_policy_rule not in ("distillm", "kollm"):
            raise ValueError(f"distill.off_policy_rule must be distillm or kollm, got {d.off_policy_rule!r}")
        if d.replay_ratio not in ("decreasing", "constant", "increasing"):
            raise ValueError(f"distill.replay_ratio must be decreasing, constant or increasing, got {d.replay_ratio!r}")
        self.prob = d.off_policy_init if self.off_policy else 0.0
        self.last_val: float | None = None
        self.buffer: deque[tuple[list[int], int]] = deque(maxlen=d.replay_capacity)  # (ids, prompt length)
        self.step, self.total = 0, 1  # the trainer's optimizer steps (on_step)
        # DistiLLM validates before the first step: that value is the reference of the first rise.
        self.validate_at_start = self.off_policy

    def on_step(self, step: int, total: int) -> None:
        """The trainer, before each step's batches: `step` steps done of `total`."""
        self.step, self.total = step, max(1, total)

    def fresh_share(self) -> float:
        """Of the off-policy batches, the share generated anew (the rest replayed), at this step."""
        d = self.d
        if d.replay_ratio == "constant":
            return d.fresh_prob
        done = min(1.0, (self.step + 1) / self.total)  # DistiLLM's global_step counts from 1
        return done if d.replay_ratio == "increasing" else 1.0 - done

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order[self.rank::self.world] or order  # fewer rows than ranks: every rank sees them all

    def _take(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if self.cursor >= len(self.order):
                self.epoch, self.cursor = self.epoch + 1, 0
                self.order = self._order(self.epoch)
            out.append(self.order[self.cursor])
            self.cursor += 1
        return out

    def set_phase(self, phase) -> None:
        self.max_len = phase.seq_len

    def next_batch(self, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        n = batch_size or 1
        idx = self._take(n)
        r = self.draw.random() if self.off_policy and self.prob > 0 else 1.0
        filling = len(self.buffer) < self.buffer.maxlen or len(self.buffer) < n
        if self.lockstep and r < self.prob:  # every rank takes the same branch
            filling = bool(_all_reduce_max(float(filling)))
        if r < self.prob * self.fresh_share() or (r < self.prob and filling):
            samples = self._generate([self.examples[i].prompt for i in idx])
            self.buffer.extend(samples)
            batch = self._generated([self._as_example(ids, p) for ids, p in samples])
        elif r < self.prob:
            batch = self._generated([self._as_example(ids, p) for ids, p in self.rng.sample(list(self.buffer), n)])
        else:
            batch = collate([self.examples[i] for i in idx], self.stored, idx)
        if self.off_policy:
            batch["off_policy_prob"] = torch.tensor([self.prob])
            batch["replay_size"] = torch.tensor([float(len(self.buffer))])
        return batch

    def _generated(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        if self.server is None:  # the online teacher scores them in the objective
            return collate(examples)
        self.server.score(examples)
        return collate(examples, self.server, list(range(len(examples))))

    @staticmethod
    def _as_example(ids: list[int], n_prompt: int) -> Example:
        # Labels aligned with the inputs like the dataset's: the response tokens (stop token
        # included) are targets; lm/distill losses shift by one, so the logits at the last prompt
        # position learn the first response token.
        return Example(ids, [IGNORE] * n_prompt + ids[n_prompt:], ids[:n_prompt])

    def _generate(self, prompts: list[list[int]]) -> list[tuple[list[int], int]]:
        d = self.d
        budget = max(1, min(d.max_new_tokens, self.max_len - max(len(p) for p in prompts)))
        if self.lockstep:  # FSDP gathers the weights in every forward: all ranks run the same ones
            budget = int(_all_reduce_max(-float(budget)) * -1)
        gcfg = GenerationConfig(max_new_tokens=budget, do_sample=True, temperature=d.temperature, top_p=d.top_p,
                                top_k=d.top_k, seed=self.rng.randrange(2**31),
                                stop_token_ids=[] if self.lockstep else self.stop_ids,
                                # the dynamic cache calls the model's own forward, where FSDP gathers
                                cache="dynamic" if self.lockstep else "static", compile=False if self.lockstep else None)
        model = unwrap(self.student)
        device = next(model.parameters()).device
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            outs = generate(model, prompts, gcfg)
        if self.lockstep:  # no early stop above: cut each row after its first stop token here
            stops = set(self.stop_ids)
            outs = [o[:next((i + 1 for i, t in enumerate(o) if t in stops), len(o))] for o in outs]
        return [(list(p) + list(o), len(p)) for p, o in zip(prompts, outs)]

    def on_validation(self, metrics: dict) -> None:
        """Raise P(off-policy) after a validation. distillm: when the student's dev cross-entropy
        is ≥ the last accepted value + margin, and only then is the value accepted (the first
        validation, at step 0, sets it). kollm: when `val_loss` is not below the previous
        validation's by the margin."""
        kollm = self.d.off_policy_rule == "kollm"
        val = metrics.get("val_loss" if kollm else "val_ce")
        if not self.off_policy or val is None:
            return
        if self.last_val is None:
            self.last_val = float(val)
            return
        if kollm:
            if val > self.last_val - self.d.off_policy_margin:
                self.prob = min(1.0, self.prob + self.d.off_policy_step)
            self.last_val = float(val)
        elif val >= self.last_val + self.d.off_policy_margin:
            self.prob = min(1.0, self.prob + self.d.off_policy_step)
            self.last_val = float(val)

    def state_dict(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        # max_len: the phase's seq_len (set_phase), which bounds the generation budget
        dv, di, dg = self.draw.getstate()
        return {"epoch": self.epoch, "cursor": self.cursor, "rng": [version, list(internal), gauss],
                "draw": [dv, list(di), dg],
                "prob": self.prob, "last_val": self.last_val, "buffer": [[ids, p] for ids, p in self.buffer],
                "max_len": self.max_len}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self.order = self._order(self.epoch)
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        if "draw" in state:
            dv, di, dg = state["draw"]
            self.draw.setstate((dv, tuple(di), dg))
        self.prob, self.last_val = state["prob"], state["last_val"]
        self.max_len = state.get("max_len", self.max_len)  # a checkpoint from before it was saved
        self.buffer.clear()
        self.buffer.extend((list(ids), p) for ids, p in state["buffer"])


def _all_reduce_max(x: float) -> float:
    """The largest `x` over the ranks (fsdp lockstep decisions)."""
    t = torch.tensor([x], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t[0])


class ValidationData:
    """Held-out rows in a fixed order and fixed batches (the trainer's `val_data`)."""

    def __init__(self, examples: ChatExamples, batch_size: int, stored: StoredTopK | None = None,
                 rank: int = 0, world: int = 1):
        self.examples, self.batch_size, self.stored = examples.examples, batch_size, stored
        self.row_errors = examples.errors
        # the same number of rows (so of batches) on every rank: the remainder of len / world is dropped
        n = len(self.examples) // world * world
        self.indices = list(range(n))[rank::world] if n else list(range(len(self.examples)))

    def batches(self):
        for a in range(0, len(self.indices), self.batch_size):
            idx = self.indices[a:a + self.batch_size]
            yield collate([self.examples[i] for i in idx], self.stored, idx)


# -- demo data -------------------------------------------------------------------------------------
def demo_rows(corpus: str | Path, out: str | Path, held_out: float = 0.1, max_validation: int = 64
              ) -> tuple[Path, Path]:
    """The demo corpus's paragraphs as prompt/completion rows: the first sentence is the prompt,
    the rest of the paragraph the completion; every 1/held_out-th document goes to validation
    (held-out prompts; at most `max_validation` rows, so CPU validation stays quick)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {"train": [], "validation": []}
    # the demo corpus plants two malformed rows (kollm.demo_corpus): skipped here as everywhere
    docs = [row["text"] for _, row, _ in iter_rows(corpus) if row and isinstance(row.get("text"), str)]
    for i, text in enumerate(docs):
        split = "validation" if i % round(1 / held_out) == 0 else "train"
        for para in text.split("\n\n"):
            first, sep, rest = para.partition(". ")
            if sep and rest.strip():
                rows[split].append({"prompt": first + ".", "completion": rest.strip()})
    rows["validation"] = rows["validation"][:max_validation]
    paths = []
    for split, items in rows.items():
        p = out / f"{split}.jsonl"
        p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), encoding="utf-8")
        paths.append(p)
    return paths[0], paths[1]


__all__ = ["Example", "ChatExamples", "StoredTopK", "ServerTopK", "collate", "DistillData", "ValidationData",
           "demo_rows", "file_digest", "vocab_digest", "STORED_FILES"]
