"""`kollm distill CONFIG [--set KEY=VALUE] [--resume]`: knowledge distillation (DNA 1.0 §4.5,
DistiLLM: Ko et al. 2024, github jongwooko/distillm) on the one trainer.

The objective is kollm.train.objectives.distill (skew KL / skew reverse KL, forward / reverse KL,
optional cross-entropy). This file is the data side and the command:

- `ChatExamples`: chat / prompt-completion rows (kollm.data.chat formats) rendered with the
  student's chat template; labels are the assistant tokens (plus each turn's end token), IGNORE
  elsewhere; bad rows are counted by reason with file:line and skipped.
- `DistillData`: the trainer's data source. Per micro-batch, with probability φ =
  `off_policy_prob` it trains on student-generated responses instead of the dataset's
  (DistiLLM's adaptive off-policy, its finetune.py): the student is validated before the first
  step and every `validation.every` steps; φ starts at `off_policy_init` and rises by
  `off_policy_step` when the student's cross-entropy on the dev responses (`val_ce`) is worse
  than the last accepted value by `off_policy_margin` (DistiLLM's loss_eps; the value is
  accepted only on a rise) — `off_policy_rule: kollm` is kollm's earlier rule instead: the
  objective's `val_loss` failing to improve on the previous validation by the margin. One draw r
  per micro-batch, as DistiLLM: r < φ·s or (r < φ while the replay buffer fills) generates anew,
  r < φ replays buffered samples, else the dataset's batch; the fresh share s is 1 − step/total
  (`replay_ratio: decreasing`, DistiLLM's default), step/total (increasing) or `fresh_prob`
  (constant). A generated response is labelled the way
  the dataset's are: labels aligned with the inputs, so the logits at the last prompt position
  are trained toward the first response token and the stop token is kept (DistiLLM's sampler is
  one position off here; docs/design.md). Its state (row order, RNG, schedule, buffer, the phase's length) is in
  every checkpoint, so a resumed run continues exactly.
- The teacher: a Hugging Face directory loaded here without gradients (bf16 on CUDA), checked to
  have the student's vocabulary; or its top-k log-probs stored by
  `kollm distill precompute CONFIG --out DIR` and named by `teacher.stored` (offline: no teacher
  in memory; only the dataset's responses have stored logits, so student generations need
  `teacher.server`: a vLLM server of the teacher whose `prompt_logprobs` give their top-k).

`--dry-run` (also after `precompute`) prints the compute plan from the config alone (kollm.plan):
the student's training and the teacher's forward pass, whose shapes come from its config.json or
`--teacher-preset`.

`kollm distill demo-data --corpus demo.jsonl --out DIR` turns the demo corpus into
prompt/completion rows (first sentence → the rest of the paragraph) for recipes/tiny-distill.yaml.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kollm.train.config import TrainConfig, load_config
from kollm.train.objectives.lm import IGNORE

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
        from kollm.data.chat import RowErrors, read_conversations, render, render_prompt

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
    from kollm.data.chat import data_files

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
        import urllib.request

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

    def __init__(self, examples: ChatExamples, cfg: TrainConfig, student: nn.Module | None, stop_ids: list[int],
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
        self.lockstep = cfg.parallel.mode in ("fsdp", "zero1") and world > 1
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
        from kollm.model.generate import GenerationConfig, generate
        from kollm.train.parallel import unwrap

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
    import torch.distributed as dist

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


# -- teacher ---------------------------------------------------------------------------------------
def check_same_vocabulary(student_tok, teacher_tok, student_path: str, teacher_path: str) -> None:
    """Logit distillation compares distributions id by id: the vocabularies must be identical."""
    s, t = student_tok.get_vocab(), teacher_tok.get_vocab()
    if s == t:
        return
    diff = sorted(set(s.items()) ^ set(t.items()), key=lambda kv: kv[1])[0]
    raise ValueError(f"teacher.model {teacher_path}: its vocabulary ({len(t)} tokens) differs from the student's "
                     f"{student_path} ({len(s)} tokens), e.g. token {diff[0]!r} (id {diff[1]}); logit distillation "
                     "needs the same tokenizer")


def load_teacher(path: str, device: torch.device, dtype_name: str) -> nn.Module:
    from kollm.model.hf import DTYPES, load_hf

    dtype = DTYPES[dtype_name] if device.type == "cuda" else torch.float32
    teacher = load_hf(path, device=device, dtype=dtype).eval()
    teacher.requires_grad_(False)
    return teacher


def student_tokenizer_path(cfg: TrainConfig) -> str:
    path = cfg.model.tokenizer or cfg.model.init_from
    if not path:
        raise ValueError("model.tokenizer or model.init_from must name the student's tokenizer")
    return path


def seq_len(cfg: TrainConfig) -> int:
    from kollm.train.schedules import phase_data

    return max(phase_data(p).seq_len for p in cfg.phases)


# -- precompute ------------------------------------------------------------------------------------
@torch.no_grad()
def precompute(cfg: TrainConfig, out: str | Path, device: torch.device | None = None, batch_size: int = 8) -> list[Path]:
    """Teacher top-k for every response target of data.train (and data.validation) → OUT/train,
    OUT/validation (atomic: written to a temp dir, renamed)."""
    from kollm.data.chat import load_tokenizer
    from kollm.train.objectives.distill import target_mask, teacher_topk

    if not cfg.teacher.model:
        raise ValueError("teacher.model is required to precompute teacher top-k")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer(student_tokenizer_path(cfg))
    check_same_vocabulary(tok, load_tokenizer(cfg.teacher.model), student_tokenizer_path(cfg), cfg.teacher.model)
    teacher = load_teacher(cfg.teacher.model, device, cfg.teacher.dtype)
    k, L = cfg.teacher.top_k, seq_len(cfg)
    written = []
    for split in ("train", "validation"):
        path = getattr(cfg.data, split)
        if not path:
            continue
        ex = ChatExamples(path, tok, L)
        final, tmp = Path(out) / split, Path(out) / f".tmp-{split}"
        tmp.mkdir(parents=True, exist_ok=True)
        counts = [sum(1 for x in e.labels[1:] if x != IGNORE) for e in ex.examples]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        n = int(offsets[-1])
        ids = np.lib.format.open_memmap(tmp / "ids.npy", "w+", np.int32, (n, k))
        logp = np.lib.format.open_memmap(tmp / "logp.npy", "w+", np.float32, (n, k))
        tail = np.lib.format.open_memmap(tmp / "tail.npy", "w+", np.float32, (n,))
        for a in range(0, len(ex.examples), batch_size):
            batch = collate(ex.examples[a:a + batch_size])
            with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
                logits = teacher(batch["input_ids"].to(device)).logits[:, :-1]
            t_ids, t_logp, t_tail = teacher_topk(logits[target_mask(batch["labels"]).to(device)], k)
            lo, hi = int(offsets[a]), int(offsets[min(a + batch_size, len(ex.examples))])
            ids[lo:hi], logp[lo:hi], tail[lo:hi] = t_ids.cpu().numpy(), t_logp.cpu().numpy(), t_tail.cpu().numpy()
        for arr in (ids, logp, tail):
            arr.flush()
        np.save(tmp / "offsets.npy", offsets)
        meta = {"teacher": str(Path(cfg.teacher.model).resolve()), "top_k": k, "data": str(Path(path).resolve()),
                "data_sha256": file_digest(path), "vocab_sha256": vocab_digest(tok), "max_len": L,
                "examples": len(ex.examples), "targets": n}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if final.exists():
            import shutil

            shutil.rmtree(final)
        tmp.rename(final)
        print(f"kollm distill precompute: {ex.report()}; {n} targets × top-{k} → {final}", file=sys.stderr)
        written.append(final)
    return written


# -- demo data -------------------------------------------------------------------------------------
def demo_rows(corpus: str | Path, out: str | Path, held_out: float = 0.1, max_validation: int = 64
              ) -> tuple[Path, Path]:
    """The demo corpus's paragraphs as prompt/completion rows: the first sentence is the prompt,
    the rest of the paragraph the completion; every 1/held_out-th document goes to validation
    (held-out prompts; at most `max_validation` rows, so CPU validation stays quick)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {"train": [], "validation": []}
    from kollm.data.chat import iter_rows

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


# -- dry run ---------------------------------------------------------------------------------------
def teacher_config(cfg: TrainConfig, preset: str | None):
    """The teacher's shapes: its config.json, else the dry run's --teacher-preset; None if neither."""
    from kollm.model.config import get_preset

    if cfg.teacher.model and (Path(cfg.teacher.model) / "config.json").is_file():
        from kollm.model.hf import config_from_hf, read_config

        return config_from_hf(read_config(cfg.teacher.model))
    return get_preset(preset) if preset else None


def dry_run(cfg: TrainConfig, args, precompute_only: bool = False) -> dict:
    """The kollm.plan dict. `kollm distill`: the student's forward+backward over the trained tokens,
    plus the teacher's forward over the same tokens when it runs online (teacher.model); with
    teacher.stored that pass belongs to `kollm distill precompute` (`precompute_only`), which is
    planned over the trained tokens too (the dataset read once: one epoch)."""
    from kollm.plan import human, make, part, world_of
    from kollm.train.memory import memory_plan
    from kollm.train.model_setup import plan_model_config
    from kollm.train.schedules import phase_data, plan_phases

    mc, notes = plan_model_config(cfg)
    world = world_of(args)
    phases = plan_phases(cfg, world)
    tokens = sum(p.tokens for p in phases)
    tc = teacher_config(cfg, getattr(args, "teacher_preset", None))
    teacher_parts, teacher_mem = [], 0.0
    if tc is None:
        notes.append(f"teacher shapes unknown ({cfg.teacher.model or 'no teacher.model'} has no config.json): pass "
                     "--teacher-preset to plan its forward pass")
    else:
        teacher_parts = [part(f"teacher forward ({tc.num_params() / 1e9:.0f}B)", "forward", p.tokens,
                              tc.flops_per_token(p.seq_len), p.seq_len) for p in phases]
        teacher_mem = 2 * tc.num_params()  # bf16 weights, whole on each rank (kollm does not shard the teacher)
    if precompute_only:
        notes.append(f"teacher top-{cfg.teacher.top_k} log-probs of the dataset's responses, in one process")
        return make("distill precompute", args, teacher_parts, memory=teacher_mem or None, notes=notes,
                    bytes_written=int(tokens * (8 * cfg.teacher.top_k + 4)))
    precision = cfg.parallel.mixed_precision or "bf16"
    ckpt = cfg.parallel.activation_checkpointing
    memory = max(memory_plan(mc, cfg.parallel.mode, world, phase_data(ph).batch_size, p.seq_len, precision,
                             ckpt, cfg.parallel.checkpoint_every).total(ckpt) for ph, p in zip(cfg.phases, phases))
    parts = [dict(part(f"student fwd+bwd ({p.name})", "train", p.tokens, mc.flops_per_token(p.seq_len), p.seq_len),
                  steps=p.steps) for p in phases]
    if cfg.teacher.stored:
        notes.append(f"teacher.stored {cfg.teacher.stored}: its forward pass is `kollm distill precompute`'s")
    else:
        parts += teacher_parts
        memory += teacher_mem
    if cfg.distill.off_policy:
        gen = sum(p.tokens for p in phases) * cfg.distill.max_new_tokens / seq_len(cfg)
        notes.append(f"adaptive off-policy: student generations (≤ {human(gen)} new tokens if every batch were "
                     "generated, plus the teacher's pass over them) depend on validation and are not in the total")
    return make("distill", args, parts, memory=memory, notes=notes, params=mc.num_params())


# -- the command -----------------------------------------------------------------------------------
def _parser(prog: str) -> argparse.ArgumentParser:
    from kollm.plan import add_plan_args

    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="training config (YAML), e.g. recipes/tiny-distill.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value (YAML), e.g. --set teacher.model=DIR (repeatable)")
    add_plan_args(p, "print the compute plan (student training, teacher forward) and exit")
    p.add_argument("--teacher-preset", help="dry run: the teacher's shapes when teacher.model has no config.json "
                   "(e.g. llama3.1-405b)")
    return p


def main(argv: list[str]) -> int:
    if argv and argv[0] == "demo-data":
        p = argparse.ArgumentParser(prog="kollm distill demo-data")
        p.add_argument("--corpus", required=True, help="the demo corpus (kollm demo: WORKDIR/raw/demo.jsonl)")
        p.add_argument("--out", required=True)
        args = p.parse_args(argv[1:])
        for path in demo_rows(args.corpus, args.out):
            print(path)
        return 0
    if argv and argv[0] == "precompute":
        p = _parser("kollm distill precompute")
        p.add_argument("--out", required=True, help="directory for OUT/train and OUT/validation")
        args = p.parse_args(argv[1:])
        if args.dry_run:
            from kollm.plan import emit

            return emit(dry_run(load_config(args.config, args.set), args, precompute_only=True), args)
        precompute(load_config(args.config, args.set), args.out)
        return 0
    p = _parser("kollm distill")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--validate-only", action="store_true",
                   help="print the untrained student's validation metrics (the run's step-0 baseline) and exit")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.set)
    if args.dry_run:
        from kollm.plan import emit

        return emit(dry_run(cfg, args), args)
    return train(cfg, args.resume, args.validate_only)


def train(cfg: TrainConfig, resume: bool = False, validate_only: bool = False) -> int:
    from kollm.data.chat import load_tokenizer, stop_token_ids
    from kollm.train.export import export_final
    from kollm.train.model_setup import build_run_model, model_config
    from kollm.train.objectives.distill import DistillObjective
    from kollm.train.parallel import distributed_run
    from kollm.train.schedules import phase_data
    from kollm.train.trainer import Trainer

    if not cfg.data.train:
        raise ValueError("data.train is required (chat or prompt/completion rows)")
    if not (cfg.teacher.model or cfg.teacher.stored):
        raise ValueError("teacher.model (a Hugging Face directory) or teacher.stored (kollm distill precompute) "
                         "is required")
    if cfg.distill.off_policy and cfg.teacher.stored and not cfg.teacher.server:
        raise ValueError("distill.off_policy: student generations need the teacher online (teacher.stored holds "
                         "targets for the dataset's responses only): set teacher.server (a vLLM server of the "
                         "teacher) or distill.off_policy=false")
    if cfg.checkpoint.export_hf:
        from kollm.model.hf import export_architecture

        export_architecture(model_config(cfg))
    tok_path = student_tokenizer_path(cfg)
    tok = load_tokenizer(tok_path)
    L = seq_len(cfg)
    train_ex = ChatExamples(cfg.data.train, tok, L)
    val_ex = ChatExamples(cfg.data.validation, tok, L) if cfg.data.validation else None
    stored = val_stored = None
    if cfg.teacher.stored:
        stored = StoredTopK(Path(cfg.teacher.stored) / "train", cfg.data.train, tok, L, len(train_ex.examples))
        if val_ex is not None:
            val_stored = StoredTopK(Path(cfg.teacher.stored) / "validation", cfg.data.validation, tok, L,
                                    len(val_ex.examples))
    elif cfg.teacher.model:
        check_same_vocabulary(tok, load_tokenizer(cfg.teacher.model), tok_path, cfg.teacher.model)
    with distributed_run(cfg.parallel) as info:
        if info.is_main:
            for ex in (train_ex, val_ex):
                if ex is not None:
                    print(f"kollm distill: {ex.report()}", file=sys.stderr)
        model = build_run_model(cfg, info.device)
        teacher = None if stored is not None else load_teacher(cfg.teacher.model, info.device, cfg.teacher.dtype)
        if teacher is not None and teacher.config.vocab_size != model.config.vocab_size:
            print(f"kollm distill: teacher has {teacher.config.vocab_size} embedding rows, the student "
                  f"{model.config.vocab_size}; the divergence runs over the tokenizer's {len(tok)} ids", file=sys.stderr)
        objective = DistillObjective(teacher, cfg.distill.loss, cfg.distill.alpha, cfg.distill.ce_weight, len(tok))
        server = ServerTopK(cfg.teacher.server, cfg.teacher.top_k, cfg.teacher.server_model) \
            if cfg.teacher.server and stored is not None else None
        data = DistillData(train_ex, cfg, model, stop_token_ids(tok), stored, cfg.seed, info.rank, info.world,
                           server)
        val_bs = cfg.validation.batch_size or phase_data(cfg.phases[0]).batch_size
        val = ValidationData(val_ex, val_bs, val_stored, info.rank, info.world) if val_ex is not None else None
        trainer = Trainer(cfg, model, objective, data, info, val_data=val)
        if validate_only:
            if val is None:
                raise ValueError("--validate-only needs data.validation")
            metrics = trainer.validate()
            if info.is_main:
                print(json.dumps({"step": 0, **metrics}))
            return 0
        trainer.fit(resume=resume)  # a diverged run raises: `kollm` exits 3 with its message
        if (out := export_final(trainer, cfg, tokenizer=tok_path)) is not None:
            print(f"kollm distill: Hugging Face export in {out}", file=sys.stderr)
    return 0


__all__ = ["ChatExamples", "DistillData", "ServerTopK", "StoredTopK", "ValidationData", "check_same_vocabulary", "collate",
           "demo_rows", "dry_run", "main", "precompute", "train"]
