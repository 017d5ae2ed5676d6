"""`kollm distill`'s teacher: a Hugging Face directory with the student's vocabulary (logit
distillation compares distributions id by id), loaded without gradients (bf16 on CUDA), and
`kollm distill precompute`: its top-k log-probs of every response target, stored once so that
training holds no teacher in memory (DistiLLM's offline mode; read back by distill_data.StoredTopK)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kollm.data import IGNORE
from kollm.data.chat import load_tokenizer
from kollm.model.hf import DTYPES, load_hf
from kollm.train.distill_config import DistillConfig, seq_len, student_tokenizer_path
from kollm.train.distill_data import ChatExamples, collate, file_digest, vocab_digest
from kollm.train.objectives.distill import target_mask, teacher_topk


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
    dtype = DTYPES[dtype_name] if device.type == "cuda" else torch.float32
    teacher = load_hf(path, device=device, dtype=dtype).eval()
    teacher.requires_grad_(False)
    return teacher


# -- precompute ------------------------------------------------------------------------------------
@torch.no_grad()
def precompute(cfg: DistillConfig, out: str | Path, device: torch.device | None = None, batch_size: int = 8) -> list[Path]:
    """Teacher top-k for every response target of data.train (and data.validation) → OUT/train,
    OUT/validation (atomic: written to a temp dir, renamed)."""
    if not cfg.teacher.model:
        raise ValueError("teacher.model is required to precompute teacher top-k")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer(student_tokenizer_path(cfg.train))
    check_same_vocabulary(tok, load_tokenizer(cfg.teacher.model), student_tokenizer_path(cfg.train), cfg.teacher.model)
    teacher = load_teacher(cfg.teacher.model, device, cfg.teacher.dtype)
    k, L = cfg.teacher.top_k, seq_len(cfg.train)
    written = []
    for split in ("train", "validation"):
        path = getattr(cfg.train.data, split)
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
            shutil.rmtree(final)
        tmp.rename(final)
        print(f"kollm distill precompute: {ex.report()}; {n} targets × top-{k} → {final}", file=sys.stderr)
        written.append(final)
    return written


__all__ = ["check_same_vocabulary", "load_teacher", "precompute"]
