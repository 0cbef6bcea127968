"""Reading and writing the safetensors format directly: a JSON header, then raw tensor bytes.

We parse the header ourselves so tensors can be read lazily, a chunk at a time, into buffers
we own (no mmap, so resident memory stays at the size of the buffers), and so a truncated or
malformed file is named precisely instead of failing somewhere deep in a library.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soce.checkpoints._dtypes import STORAGE, itemsize
from soce.errors import CorruptCheckpointError

_MAX_HEADER = 100 * 1024 * 1024  # the safetensors reference implementation's own limit


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, absolute byte offset, dtype code and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    offset: int
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class SafetensorsFile:
    """One .safetensors file with a validated header; reads ranges of elements on demand."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        size = self.path.stat().st_size
        if size < 8:
            raise CorruptCheckpointError(f"{self.path}: {size} bytes is too short to be a safetensors file")
        with open(self.path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > _MAX_HEADER or 8 + header_len > size:
                raise CorruptCheckpointError(
                    f"{self.path}: header length {header_len} does not fit in a {size}-byte file "
                    "(truncated or not safetensors)"
                )
            raw = f.read(header_len)
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptCheckpointError(f"{self.path}: header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise CorruptCheckpointError(f"{self.path}: header is not a JSON object")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        data_start = 8 + header_len
        data_size = size - data_start
        self.tensors: dict[str, TensorInfo] = {}
        for name, entry in header.items():
            self.tensors[name] = self._entry(name, entry, data_start, data_size)

    def _entry(self, name: str, entry: object, data_start: int, data_size: int) -> TensorInfo:
        where = f"{self.path}: tensor {name!r}"
        try:
            dtype = entry["dtype"]  # type: ignore[index]
            shape = tuple(int(d) for d in entry["shape"])  # type: ignore[index]
            begin, end = (int(x) for x in entry["data_offsets"])  # type: ignore[index]
        except (TypeError, KeyError, ValueError):
            raise CorruptCheckpointError(f"{where} has a malformed header entry: {entry!r}") from None
        if dtype not in STORAGE:
            raise CorruptCheckpointError(f"{where} has unsupported dtype {dtype!r}")
        if any(d < 0 for d in shape):
            raise CorruptCheckpointError(f"{where} has a negative dimension in shape {list(shape)}")
        expected = math.prod(shape) * itemsize(dtype)
        if begin < 0 or end - begin != expected:
            raise CorruptCheckpointError(
                f"{where} spans bytes [{begin}, {end}) but shape {list(shape)} of {dtype} needs {expected}"
            )
        if end > data_size:
            raise CorruptCheckpointError(
                f"{where} needs data up to byte {end} but the file holds {data_size} bytes of data "
                "(the file is truncated)"
            )
        return TensorInfo(name, dtype, shape, self.path, data_start + begin, expected)

    def fileno(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_range(fd: int, info: TensorInfo, start: int, out: np.ndarray) -> np.ndarray:
    """Read elements [start, start + out.size) of `info` into `out` (its storage dtype)."""
    size = itemsize(info.dtype)
    view = memoryview(out.reshape(-1).view(np.uint8))
    pos = info.offset + start * size
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], pos + done)
        if n == 0:
            raise CorruptCheckpointError(
                f"{info.file}: tensor {info.name!r} ends early at byte {pos + done} (changed while read?)"
            )
        done += n
    return out


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * itemsize(self.dtype)


@dataclass(frozen=True)
class PlannedShard:
    filename: str
    header: bytes
    # tensor name -> absolute byte offset of its data in the file
    offsets: dict[str, int]
    size: int


def plan_shards(
    tensors: Sequence[PlannedTensor], *, max_shard_bytes: int, metadata: dict[str, str] | None = None
) -> list[PlannedShard]:
    """Split tensors, in order, into shards of at most `max_shard_bytes` (a bigger tensor gets its own)."""
    groups: list[list[PlannedTensor]] = [[]]
    used = 0
    for t in tensors:
        if groups[-1] and used + t.nbytes > max_shard_bytes:
            groups.append([])
            used = 0
        groups[-1].append(t)
        used += t.nbytes
    total = len(groups)
    shards = []
    for i, group in enumerate(groups, start=1):
        filename = "model.safetensors" if total == 1 else f"model-{i:05d}-of-{total:05d}.safetensors"
        header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
        pos = 0
        for t in group:
            header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [pos, pos + t.nbytes]}
            pos += t.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as the reference writer does
        head = struct.pack("<Q", len(raw)) + raw
        offsets = {}
        cursor = len(head)
        for t in group:
            offsets[t.name] = cursor
            cursor += t.nbytes
        shards.append(PlannedShard(filename, head, offsets, cursor))
    return shards


def write_index(path: Path, shards: Sequence[PlannedShard], total_size: int) -> None:
    weight_map = {name: s.filename for s in shards for name in s.offsets}
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    path.write_text(json.dumps(index, indent=2) + "\n")


def pwrite_all(fd: int, data: np.ndarray, pos: int) -> None:
    view = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], pos + done)


def save_file(tensors: dict[str, np.ndarray], path: Path, dtypes: dict[str, str] | None = None) -> None:
    """Write numpy arrays as one safetensors file (bfloat16 given as uint16 bits with dtypes[name]='BF16')."""
    by_numpy = {v: k for k, v in STORAGE.items() if k != "BF16"}
    planned = []
    for name, arr in tensors.items():
        code = (dtypes or {}).get(name) or by_numpy[arr.dtype]
        planned.append(PlannedTensor(name, code, tuple(arr.shape)))
    (shard,) = plan_shards(planned, max_shard_bytes=1 << 62)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.pwrite(fd, shard.header, 0)
        for name, arr in tensors.items():
            pwrite_all(fd, arr, shard.offsets[name])
        os.ftruncate(fd, shard.size)
    finally:
        os.close(fd)
