"""Content hashes: independent of path and sharding, sensitive to values and tokenizer; digest cache."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from soce.checkpoints import Checkpoint, DigestCache, _hashing, checkpoint_hash
from soce.config import get_settings
from tests.checkpoints.editing import edit_json, rewrite_weights


def hash_of(folder: Path, cache: DigestCache | None = None) -> str:
    with Checkpoint.open(folder) as ckpt:
        return checkpoint_hash(ckpt, cache if cache is not None else DigestCache(None))


@pytest.fixture
def count_digests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every tensor name that is actually hashed (read from disk)."""
    calls: list[str] = []
    real = _hashing.tensor_digest

    def counting(ckpt, name):
        calls.append(name)
        return real(ckpt, name)

    monkeypatch.setattr(_hashing, "tensor_digest", counting)
    return calls


def test_hash_is_sha256_hex_and_deterministic(make_checkpoints) -> None:
    (a,) = make_checkpoints(1)
    h = hash_of(a)
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert hash_of(a) == h


def test_hash_does_not_depend_on_path(make_checkpoints, tmp_path: Path) -> None:
    (a,) = make_checkpoints(1)
    copy = tmp_path / "somewhere" / "else"
    shutil.copytree(a, copy)
    assert hash_of(copy) == hash_of(a)


def test_hash_does_not_depend_on_sharding(make_checkpoints) -> None:
    (single,) = make_checkpoints(1)
    (sharded,) = make_checkpoints(1, shard_size=20_000)
    assert (sharded / "model.safetensors.index.json").exists()
    assert hash_of(sharded) == hash_of(single)


def test_related_checkpoints_hash_differently(make_checkpoints) -> None:
    a, b = make_checkpoints(2)
    assert hash_of(a) != hash_of(b)


def test_one_changed_value_changes_the_hash(make_checkpoints, tmp_path: Path) -> None:
    (a,) = make_checkpoints(1)
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)

    def nudge(t: dict[str, np.ndarray]) -> None:
        flat = t["model.layers.0.mlp.down_proj.weight"].reshape(-1)
        flat[17] = np.nextafter(flat[17], np.float32(np.inf))  # one ulp

    rewrite_weights(copy, nudge)
    assert hash_of(copy) != hash_of(a)


def test_dtype_is_part_of_the_hash(make_checkpoints) -> None:
    (f32,) = make_checkpoints(1, dtype="float32")
    (bf16,) = make_checkpoints(1, dtype="bfloat16")
    assert hash_of(f32) != hash_of(bf16)


def test_tokenizer_change_changes_the_hash(make_checkpoints, tmp_path: Path) -> None:
    (a,) = make_checkpoints(1)
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)

    def rename_token(tok: dict) -> None:
        vocab = tok["model"]["vocab"]
        vocab["zz"] = vocab.pop("z")

    edit_json(copy / "tokenizer.json", rename_token)
    assert hash_of(copy) != hash_of(a)


def test_architecture_config_is_part_of_the_hash_but_volatile_keys_are_not(
    make_checkpoints, tmp_path: Path
) -> None:
    (a,) = make_checkpoints(1)
    h = hash_of(a)
    cosmetic = tmp_path / "cosmetic"
    shutil.copytree(a, cosmetic)
    edit_json(
        cosmetic / "config.json", lambda c: c.update(_name_or_path="/x/y", transformers_version="1.2.3")
    )
    assert hash_of(cosmetic) == h
    real = tmp_path / "real"
    shutil.copytree(a, real)
    edit_json(real / "config.json", lambda c: c.update(rope_theta=500000.0))
    assert hash_of(real) != h


def test_cache_reuses_digests(make_checkpoints, tmp_path: Path, monkeypatch, count_digests) -> None:
    (a,) = make_checkpoints(1)
    cache = DigestCache(tmp_path / "d.sqlite")
    first = hash_of(a, cache)
    n_tensors = len(Checkpoint.open(a).tensors)
    assert len(count_digests) == n_tensors
    assert (tmp_path / "d.sqlite").is_file()

    def refuse(ckpt, name):
        raise AssertionError(f"{name} was hashed again although its digest is cached")

    monkeypatch.setattr(_hashing, "tensor_digest", refuse)
    assert hash_of(a, cache) == first
    # a fresh cache object over the same file remembers too
    cache.close()
    assert hash_of(a, DigestCache(tmp_path / "d.sqlite")) == first


def test_cache_works_for_sharded_checkpoints(make_checkpoints, tmp_path: Path, count_digests) -> None:
    (sharded,) = make_checkpoints(1, shard_size=20_000)
    cache = DigestCache(tmp_path / "d.sqlite")
    first = hash_of(sharded, cache)
    hashed = len(count_digests)
    assert hashed > 0
    assert hash_of(sharded, cache) == first
    assert len(count_digests) == hashed  # nothing hashed the second time


def test_modified_file_is_rehashed(make_checkpoints, tmp_path: Path, count_digests) -> None:
    (a,) = make_checkpoints(1)
    cache = DigestCache(tmp_path / "d.sqlite")
    before = hash_of(a, cache)
    weights = a / "model.safetensors"
    st = weights.stat()

    def nudge(t: dict[str, np.ndarray]) -> None:
        t["model.norm.weight"][0] += np.float32(0.25)

    rewrite_weights(a, nudge)  # same size, same inode
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert weights.stat().st_size == st.st_size
    count_digests.clear()
    after = hash_of(a, cache)
    assert after != before
    assert "model.norm.weight" in count_digests
    assert after == hash_of(a, DigestCache(None))  # the cache agrees with hashing from scratch


def test_resized_file_is_rehashed(make_checkpoints, tmp_path: Path, count_digests) -> None:
    (a,) = make_checkpoints(1)
    cache = DigestCache(tmp_path / "d.sqlite")
    before = hash_of(a, cache)

    def add(t: dict[str, np.ndarray]) -> None:
        t["model.extra.weight"] = np.ones(5, np.float32)

    rewrite_weights(a, add)
    count_digests.clear()
    after = hash_of(a, cache)
    assert after != before
    assert "model.extra.weight" in count_digests
    assert after == hash_of(a, DigestCache(None))


def test_cache_without_a_path_remembers_nothing(make_checkpoints, count_digests) -> None:
    (a,) = make_checkpoints(1)
    cache = DigestCache(None)
    assert hash_of(a, cache) == hash_of(a, cache)
    n_tensors = len(Checkpoint.open(a).tensors)
    assert len(count_digests) == 2 * n_tensors


def test_default_cache_lives_in_the_data_dir(make_checkpoints, count_digests) -> None:
    (a,) = make_checkpoints(1)
    with Checkpoint.open(a) as ckpt:
        h = checkpoint_hash(ckpt)
        hashed = len(count_digests)
        assert checkpoint_hash(ckpt) == h
    assert len(count_digests) == hashed
    assert (get_settings().data_dir / "digests.sqlite").is_file()
