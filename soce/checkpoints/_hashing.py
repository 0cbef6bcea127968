"""Content hashes of checkpoints that do not depend on folder path or sharding.

A checkpoint's hash is SHA-256 over a manifest: one digest per tensor (with its name, dtype and
shape), its tokenizer files and the architecture part of its config. Per-tensor digests let a
merge hash its inputs while it streams them, in any order and from several threads, and they
are remembered per weights file by (path, size, mtime, inode) so a file is hashed once.

Tensor digests are XXH3-128, not SHA-256: they run at memory speed (about 11 GB/s a core here
against 1.3 GB/s), which keeps hashing off the critical path of a merge and makes registering
a 100 GB checkpoint take seconds. The hash identifies content for caching and lineage; it is
not a defence against someone crafting a collision.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
from pathlib import Path

import numpy as np
import xxhash

from soce.checkpoints._checkpoint import Checkpoint
from soce.checkpoints._dtypes import STORAGE

log = logging.getLogger(__name__)

HASH_VERSION = "soce-checkpoint-v1 xxh3-128 leaves"
_CHUNK = 8 * 1024 * 1024  # elements per read while hashing
# Config keys that say nothing about the weights' meaning.
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache"}
_VOLATILE_TOKENIZER_KEYS = {"name_or_path", "_name_or_path"}


def tensor_hasher() -> xxhash.xxh3_128:
    """A fresh hasher for one tensor's bytes."""
    return xxhash.xxh3_128()


def tensor_digest(ckpt: Checkpoint, name: str) -> str:
    """XXH3-128 of one tensor's raw bytes, read in chunks."""
    info = ckpt.tensors[name]
    h = tensor_hasher()
    buf = np.empty(min(info.numel, _CHUNK), dtype=STORAGE[info.dtype])
    start = 0
    while start < info.numel:
        part = buf[: min(_CHUNK, info.numel - start)]
        ckpt.read(name, start, part)
        h.update(memoryview(part.view(np.uint8)))
        start += part.size
    return h.hexdigest()


def weights_hash(ckpt: Checkpoint, digests: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(ckpt.tensors):
        info = ckpt.tensors[name]
        h.update(f"{name}\t{info.dtype}\t{list(info.shape)}\t{digests[name]}\n".encode())
    return h.hexdigest()


def _canonical_json(path: Path, drop: set[str]) -> bytes:
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return path.read_bytes()
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in drop}
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


_tokenizer_digests: dict[tuple[str, int, int, int], bytes] = {}  # (path, size, mtime, inode) -> digest
_TOKENIZER_DIGESTS_KEPT = 4096


def _tokenizer_file_digest(path: Path) -> bytes:
    """SHA-256 of a tokenizer file (JSON canonicalised), remembered per (path, size, mtime, inode): a
    49k-token tokenizer.json takes a quarter of a second to parse, and a run hashes its candidates often."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    digest = _tokenizer_digests.get(key)
    if digest is None:
        json_file = path.suffix == ".json"
        body = _canonical_json(path, _VOLATILE_TOKENIZER_KEYS) if json_file else path.read_bytes()
        digest = hashlib.sha256(body).digest()
        if len(_tokenizer_digests) >= _TOKENIZER_DIGESTS_KEPT:
            _tokenizer_digests.clear()
        _tokenizer_digests[key] = digest
    return digest


def tokenizer_hash(ckpt: Checkpoint) -> str | None:
    """SHA-256 over the tokenizer files (JSON canonicalised), or None when the folder has none."""
    files = ckpt.tokenizer_files
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + _tokenizer_file_digest(f))
    return h.hexdigest()


def config_hash(ckpt: Checkpoint) -> str | None:
    if ckpt.config is None:
        return None
    cfg = {k: v for k, v in ckpt.config.items() if k not in _VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def content_hash(ckpt: Checkpoint, digests: dict[str, str]) -> str:
    """The checkpoint's identity: weights, tokenizer and architecture config, not its path."""
    parts = [HASH_VERSION, weights_hash(ckpt, digests), tokenizer_hash(ckpt) or "-", config_hash(ckpt) or "-"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class DigestCache:
    """Per-file tensor digests in a small SQLite file, keyed by the file's identity on disk."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection | None:
        if self._path is None:
            return None
        if self._conn is None:
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self._path, timeout=30, check_same_thread=False)
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS file_digests (file TEXT, size INT, mtime_ns INT, inode INT,"
                    " digests TEXT, PRIMARY KEY (file, size, mtime_ns, inode))"
                )
                conn.commit()
                self._conn = conn
            except sqlite3.Error as e:
                log.warning("digest cache at %s unavailable (%s); hashing without it", self._path, e)
                self._path = None
                return None
        return self._conn

    @staticmethod
    def _key(file: Path) -> tuple[str, int, int, int]:
        st = file.stat()
        return (str(file.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)

    def get(self, file: Path) -> dict[str, str] | None:
        with self._lock:
            db = self._db()
            if db is None:
                return None
            row = db.execute(
                "SELECT digests FROM file_digests WHERE file=? AND size=? AND mtime_ns=? AND inode=?",
                self._key(file),
            ).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, file: Path, digests: dict[str, str]) -> None:
        with self._lock:
            db = self._db()
            if db is None:
                return
            try:
                db.execute(
                    "INSERT OR REPLACE INTO file_digests VALUES (?,?,?,?,?)",
                    (*self._key(file), json.dumps(digests)),
                )
                db.commit()
            except sqlite3.Error as e:
                log.warning("could not record digests of %s (%s)", file, e)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def default_digest_cache() -> DigestCache:
    from soce.config import get_settings

    s = get_settings()
    return DigestCache(s.data_dir / "digests.sqlite" if s.hash_cache else None)


def cached_digests(ckpt: Checkpoint, cache: DigestCache) -> dict[str, str]:
    """Digests of the tensors whose files the cache already knows; the rest are absent."""
    known: dict[str, str] = {}
    for file in ckpt.weight_files:
        got = cache.get(file)
        if got:
            names = [n for n, i in ckpt.tensors.items() if i.file == file]
            if all(n in got for n in names):
                known.update({n: got[n] for n in names})
    return known


def remember_digests(ckpt: Checkpoint, digests: dict[str, str], cache: DigestCache) -> None:
    by_file: dict[Path, dict[str, str]] = {}
    for name, info in ckpt.tensors.items():
        if name in digests:
            by_file.setdefault(info.file, {})[name] = digests[name]
    for file, d in by_file.items():
        if len(d) == sum(1 for i in ckpt.tensors.values() if i.file == file):
            cache.put(file, d)


def checkpoint_hash(ckpt: Checkpoint, cache: DigestCache | None = None) -> str:
    """Content hash of a checkpoint, hashing only tensors whose digests are not cached."""
    cache = cache if cache is not None else default_digest_cache()
    digests = cached_digests(ckpt, cache)
    for name in ckpt.tensors:
        if name not in digests:
            digests[name] = tensor_digest(ckpt, name)
    remember_digests(ckpt, digests, cache)
    return content_hash(ckpt, digests)
