"""Streaming safetensors in and out: a merge holds a few tensors in memory, never a model.

In: `Checkpoint` reads a Hugging Face directory's headers only (single file or sharded with
`model.safetensors.index.json`), then hands out one tensor at a time with a positioned read into
a fresh buffer. Not mmap (`safe_open`): pages of a mapped file count in the process's resident
set until unmapped, so a mapped read of every input would show the whole inputs as memory.
Out: `SafetensorsWriter` knows every output tensor's name, shape and dtype before the first byte (the
plan does), so each shard's header is written first and tensors are appended as they are
computed — peak memory is the inputs and result of one tensor, not a shard. The file format is
safetensors' own: an 8-byte little-endian header length, a JSON header padded with spaces to
8 bytes, then the raw bytes in header order; shards are named and indexed as transformers does.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
             torch.bool: "BOOL"}
_FROM_ST = {v: k for k, v in ST_DTYPES.items()}
# Old Llama checkpoints carry the RoPE table as a tensor; neither transformers nor mergekit keeps it.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class Checkpoint:
    """Tensor names, shapes, dtypes and files of one HF directory; tensors read on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        cfg = self.path / "config.json"
        if not cfg.is_file():
            raise FileNotFoundError(f"{self.path}: no config.json (not a Hugging Face model directory)")
        try:
            self.config = json.loads(cfg.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg}: invalid JSON at line {e.lineno}: {e.msg}") from None
        self.files = self._files()
        # name → (file, shape, dtype, absolute byte offset, byte length)
        self.info: dict[str, tuple[Path, tuple[int, ...], torch.dtype, int, int]] = {}
        for f in self.files:
            for name, (shape, dtype, start, n) in read_header(f).items():
                if not name.endswith(IGNORED_SUFFIXES):
                    self.info[name] = (f, shape, dtype, start, n)
        self._fds: dict[Path, int] = {}

    def _files(self) -> list[Path]:
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text()).get("weight_map")
            except json.JSONDecodeError as e:
                raise ValueError(f"{index}: invalid JSON at line {e.lineno}: {e.msg}") from None
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index}: no 'weight_map'")
            files = [self.path / f for f in dict.fromkeys(weight_map.values())]
            for f in files:
                if not f.is_file():
                    raise FileNotFoundError(f"{index} names shard {f.name}, which is missing")
            return files
        if (self.path / "model.safetensors").is_file():
            return [self.path / "model.safetensors"]
        if list(self.path.glob("pytorch_model*.bin")):
            raise ValueError(f"{self.path}: only pickle weights (pytorch_model.bin); kollm merges safetensors only "
                             "(re-save with save_pretrained(safe_serialization=True))")
        raise FileNotFoundError(f"{self.path}: no model.safetensors or model.safetensors.index.json")

    def _fd(self, f: Path) -> int:
        if f not in self._fds:
            self._fds[f] = os.open(f, os.O_RDONLY)
        return self._fds[f]

    def __contains__(self, name: str) -> bool:
        return name in self.info

    def file_of(self, name: str) -> Path:
        return self.info[name][0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.info[name][1]

    def get(self, name: str) -> torch.Tensor:
        if name not in self.info:
            raise KeyError(f"{self.path}: no tensor {name}")
        f, shape, dtype, start, n = self.info[name]
        buf = bytearray(n)
        view, fd, done = memoryview(buf), self._fd(f), 0
        while done < n:  # pread may return short reads on large tensors
            k = os.preadv(fd, [view[done:]], start + done)
            if k <= 0:
                raise ValueError(f"{f}: truncated reading tensor {name}")
            done += k
        if n == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def read_header(f: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype, int, int]]:
    """A safetensors file's header → name: (shape, dtype, absolute offset, byte length), checked."""
    size = f.stat().st_size
    with open(f, "rb") as fh:
        raw = fh.read(8)
        hlen = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        if hlen < 2 or 8 + hlen > size:
            raise ValueError(f"{f}: not a readable safetensors file (bad header length)")
        try:
            header = json.loads(fh.read(hlen))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError(f"{f}: not a readable safetensors file (header is not JSON)") from None
    out, data_start = {}, 8 + hlen
    for name, e in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _FROM_ST[e["dtype"]]
            shape = tuple(int(d) for d in e["shape"])
            begin, end = (int(x) for x in e["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{f}: tensor {name}: unsupported dtype or malformed header entry {e!r}") from None
        n = dtype.itemsize * torch.Size(shape).numel()
        if end - begin != n or data_start + end > size:
            raise ValueError(f"{f}: tensor {name}: byte range {begin}..{end} does not fit its shape or the file")
        out[name] = (shape, dtype, data_start + begin, n)
    return out


def _header(entries: list[tuple[str, tuple[int, ...], torch.dtype]]) -> tuple[bytes, list[int]]:
    header, offset, sizes = {}, 0, []
    for name, shape, dtype in entries:
        n = dtype.itemsize
        for d in shape:
            n *= d
        header[name] = {"dtype": ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
        sizes.append(n)
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # safetensors aligns the data start to 8 bytes
    return struct.pack("<Q", len(raw)) + raw, sizes


class SafetensorsWriter:
    """Writes tensors, in the announced order, into shards of at most `max_shard_size` bytes."""

    def __init__(self, out: Path, entries: list[tuple[str, tuple[int, ...], torch.dtype]], max_shard_size: int):
        self.out = Path(out)
        shards: list[list] = [[]]
        size = 0
        for e in entries:
            n = e[2].itemsize * (torch.Size(e[1]).numel())
            if shards[-1] and size + n > max_shard_size:
                shards.append([])
                size = 0
            shards[-1].append(e)
            size += n
        self.shards = shards
        k = len(shards)
        self.names = (["model.safetensors"] if k == 1
                      else [f"model-{i + 1:05d}-of-{k:05d}.safetensors" for i in range(k)])
        self._queue = [(si, e) for si, sh in enumerate(shards) for e in sh]
        self._pos = 0
        self._file = None
        self._shard = -1
        self.total = sum(e[2].itemsize * torch.Size(e[1]).numel() for e in entries)

    def write(self, name: str, t: torch.Tensor) -> None:
        si, (want, shape, dtype) = self._queue[self._pos]
        if name != want or tuple(t.shape) != tuple(shape) or t.dtype != dtype:
            raise RuntimeError(f"writer expected {want} {shape} {dtype}, got {name} {tuple(t.shape)} {t.dtype}")
        if si != self._shard:
            if self._file:
                self._file.close()
            self._shard = si
            self._file = open(self.out / self.names[si], "wb")
            head, _ = _header(self.shards[si])
            self._file.write(head)
        if t.numel():
            self._file.write(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().data)
        self._pos += 1

    def close(self) -> None:
        if self._pos != len(self._queue):
            raise RuntimeError(f"writer closed after {self._pos} of {len(self._queue)} tensors")
        if self._file:
            self._file.close()
            self._file = None
        if len(self.names) > 1:
            weight_map = {e[0]: self.names[si] for si, sh in enumerate(self.shards) for e in sh}
            index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
            (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
