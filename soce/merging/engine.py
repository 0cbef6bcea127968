"""The streaming merge: inputs are read a chunk at a time, merged in float32, written in place.

Output shards are laid out before any data is read (names, dtypes and shapes fix every
offset), so workers can process tensors in any order and write with pwrite. Each worker owns
a few chunk-sized buffers; nothing the size of a model is ever resident. Inputs are hashed
while they stream past, so a merge reads every byte exactly once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from soce.checkpoints import Checkpoint, DigestCache
from soce.checkpoints._dtypes import FLOAT_CODES, STORAGE, narrow, widen
from soce.checkpoints._hashing import cached_digests, remember_digests, tensor_hasher
from soce.checkpoints._safetensors import PlannedShard, PlannedTensor, plan_shards, pwrite_all, write_index
from soce.errors import NonFiniteTensorError
from soce.merging._base import MergeMethod

log = logging.getLogger(__name__)

Progress = Callable[[int], None]


@dataclass
class StreamResult:
    tensors: list[PlannedTensor]
    shards: list[PlannedShard]
    # per input (candidates, then base): tensor name -> XXH3-128 digest of its bytes
    digests: list[dict[str, str]] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


class _Buffers:
    """One worker's scratch space, grown on demand and reused across tensors."""

    def __init__(self) -> None:
        self.arrays: dict[tuple[str, int], np.ndarray] = {}

    def get(self, key: str, index: int, size: int, dtype: np.dtype) -> np.ndarray:
        arr = self.arrays.get((key, index))
        if arr is None or arr.dtype != dtype or arr.size < size:
            arr = np.empty(size, dtype=dtype)
            self.arrays[(key, index)] = arr
        return arr[:size]


class StreamingMerge:
    """Merges `candidates` (and `base`) with `method` into safetensors shards under `out_dir`."""

    def __init__(
        self,
        method: MergeMethod,
        candidates: Sequence[Checkpoint],
        base: Checkpoint | None = None,
        *,
        out_dtype: str | None = None,
        shard_size: int = 5 * 10**9,
        threads: int = 0,
        chunk_elements: int = 2 * 1024 * 1024,
        digest_cache: DigestCache | None = None,
        check_finite: bool = False,
    ) -> None:
        self.method = method
        self.inputs = [*candidates, *([base] if base is not None else [])]
        self.n = len(candidates)
        self.has_base = base is not None
        self.out_dtype = out_dtype
        self.shard_size = shard_size
        self.threads = threads or min(len(os.sched_getaffinity(0)), 8)
        self.chunk = chunk_elements
        self.cache = digest_cache or DigestCache(None)
        self.check_finite = check_finite
        self._local = threading.local()
        self._digests: list[dict[str, str]] = []
        self._lock = threading.Lock()

    def plan(self) -> list[PlannedTensor]:
        planned = []
        for name, info in self.inputs[0].tensors.items():
            dtype = info.dtype
            if self.out_dtype and dtype in FLOAT_CODES:
                dtype = self.out_dtype
            planned.append(PlannedTensor(name, dtype, info.shape))
        return planned

    def run(self, out_dir: Path, progress: Progress | None = None) -> StreamResult:
        tensors = self.plan()
        shards = plan_shards(tensors, max_shard_bytes=self.shard_size)
        self._digests = [cached_digests(ckpt, self.cache) for ckpt in self.inputs]
        fds: dict[str, int] = {}
        where: dict[str, tuple[int, int]] = {}
        try:
            for shard in shards:
                fd = os.open(out_dir / shard.filename, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                fds[shard.filename] = fd
                os.pwrite(fd, shard.header, 0)
                os.ftruncate(fd, shard.size)
                for name, offset in shard.offsets.items():
                    where[name] = (fd, offset)
            self._run_all(tensors, where, progress)
        finally:
            for fd in fds.values():
                os.close(fd)
        if len(shards) > 1:
            write_index(out_dir / "model.safetensors.index.json", shards, sum(t.nbytes for t in tensors))
        for ckpt, digests in zip(self.inputs, self._digests, strict=True):
            remember_digests(ckpt, digests, self.cache)
        return StreamResult(tensors, shards, self._digests)

    def _run_all(
        self, tensors: list[PlannedTensor], where: dict[str, tuple[int, int]], progress: Progress | None
    ) -> None:
        # largest first, so the pool does not end waiting on one big embedding
        order = sorted(tensors, key=lambda t: -t.nbytes)

        def work(t: PlannedTensor) -> None:
            fd, offset = where[t.name]
            self._merge_tensor(t, fd, offset)
            if progress is not None:
                with self._lock:
                    progress(t.nbytes)

        if self.threads == 1:
            for t in order:
                work(t)
            return
        with ThreadPoolExecutor(self.threads, thread_name_prefix="soce-merge") as pool:
            futures = [pool.submit(work, t) for t in order]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            for f in pending:
                f.cancel()
            for f in done:
                f.result()  # re-raises the first failure

    def _buffers(self) -> _Buffers:
        buf = getattr(self._local, "buffers", None)
        if buf is None:
            buf = self._local.buffers = _Buffers()
        return buf

    def _merge_tensor(self, t: PlannedTensor, fd: int, offset: int) -> None:
        infos = [ckpt.tensors[t.name] for ckpt in self.inputs]
        hashers = [tensor_hasher() if t.name not in digests else None for digests in self._digests]
        numel = infos[0].numel
        if infos[0].dtype not in FLOAT_CODES:
            self._copy_raw(t, fd, offset, hashers)
        else:
            step = self.chunk if self.method.elementwise else max(numel, 1)
            buffers = self._buffers()
            out_storage = STORAGE[t.dtype]
            for start in range(0, numel, step):
                size = min(step, numel - start)
                f32 = [
                    self._read_f32(k, t.name, start, size, hashers[k], buffers)
                    for k in range(len(self.inputs))
                ]
                acc = buffers.get("acc", 0, size, np.dtype(np.float32))
                if not self.method.elementwise:
                    shape = t.shape
                    f32 = [a.reshape(shape) for a in f32]
                    acc = acc.reshape(shape)
                self.method.merge(t.name, f32[: self.n], f32[self.n] if self.has_base else None, acc)
                acc = acc.reshape(-1)
                if self.check_finite and not np.isfinite(acc).all():
                    raise NonFiniteTensorError(f"merged tensor {t.name!r} has NaN or Inf values")
                raw = (
                    acc
                    if t.dtype == "F32"
                    else narrow(acc, t.dtype, buffers.get("out", 0, size, out_storage))
                )
                pwrite_all(fd, raw, offset + start * out_storage.itemsize)
        for k, h in enumerate(hashers):
            if h is not None:
                with self._lock:
                    self._digests[k][t.name] = h.hexdigest()

    def _read_f32(
        self, k: int, name: str, start: int, size: int, hasher: Any, buffers: _Buffers
    ) -> np.ndarray:
        code = self.inputs[k].tensors[name].dtype
        dst = buffers.get("in", k, size, np.dtype(np.float32))
        raw = dst if code == "F32" else buffers.get("raw", 0, size, STORAGE[code])
        self.inputs[k].read(name, start, raw)
        if hasher is not None:
            hasher.update(memoryview(raw.view(np.uint8)))
        return widen(raw, code, dst)

    def _copy_raw(self, t: PlannedTensor, fd: int, offset: int, hashers: list) -> None:
        """Non-float tensors (integer buffers) are taken from the first candidate unchanged."""
        for k, ckpt in enumerate(self.inputs):
            if k and hashers[k] is None:
                continue
            raw = ckpt.read(t.name)
            if hashers[k] is not None:
                hashers[k].update(memoryview(raw.view(np.uint8)))
            if k == 0:
                pwrite_all(fd, raw, offset)
