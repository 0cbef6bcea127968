"""Our safetensors reader and writer against the reference `safetensors` library."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from soce.checkpoints import Checkpoint, SafetensorsFile, save_file
from soce.checkpoints._safetensors import PlannedTensor, plan_shards, pwrite_all, write_index
from soce.errors import CorruptCheckpointError


def _bits(t: torch.Tensor) -> np.ndarray:
    """bfloat16 tensor -> its raw uint16 bits as numpy."""
    return t.contiguous().view(torch.int16).numpy().view(np.uint16)


def _special_bf16() -> torch.Tensor:
    rng = np.random.default_rng(7)
    values = np.concatenate(
        [
            rng.standard_normal(97).astype(np.float32) * 3,
            np.array([0.0, -0.0, np.inf, -np.inf, 1e-40, -1e-39, 3.0e38, 1.0], np.float32),
        ]
    )
    return torch.from_numpy(values).to(torch.bfloat16).reshape(15, 7)


@pytest.mark.parametrize(
    ("dtype", "code"),
    [(np.float32, "F32"), (np.float16, "F16"), (np.int64, "I64")],
)
def test_reader_matches_reference_library(tmp_path: Path, dtype, code: str) -> None:
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        arrays = {
            "a": rng.integers(-(2**40), 2**40, size=(5, 3)).astype(dtype),
            "b": np.arange(11, dtype=dtype),
        }
    else:
        arrays = {
            "a": rng.standard_normal((5, 3)).astype(dtype),
            "b": rng.standard_normal(11).astype(dtype),
        }
    arrays["scalar"] = np.array(42, dtype=dtype)
    path = tmp_path / "x.safetensors"
    safetensors.numpy.save_file(arrays, str(path), metadata={"format": "np", "who": "test"})

    reference = safetensors.numpy.load_file(str(path))
    f = SafetensorsFile(path)
    assert f.metadata == {"format": "np", "who": "test"}
    assert set(f.tensors) == set(reference)
    with Checkpoint.open(path) as ckpt:
        for name, ref in reference.items():
            info = ckpt.tensors[name]
            assert info.dtype == code
            assert info.shape == ref.shape
            got = ckpt.read(name).reshape(info.shape)
            assert got.dtype == ref.dtype
            np.testing.assert_array_equal(got, ref)
    f.close()


def test_bfloat16_reader_matches_torch_bits(tmp_path: Path) -> None:
    t = _special_bf16()
    path = tmp_path / "bf16.safetensors"
    safetensors.torch.save_file({"w": t, "v": t[3].clone()}, str(path))
    reference = safetensors.torch.load_file(str(path))
    with Checkpoint.open(path) as ckpt:
        assert ckpt.tensors["w"].dtype == "BF16"
        assert ckpt.dtype == "BF16"
        for name, ref in reference.items():
            raw = ckpt.read(name)
            assert raw.dtype == np.uint16
            np.testing.assert_array_equal(raw, _bits(ref).reshape(-1))
            # widening to float32 is exact
            np.testing.assert_array_equal(ckpt.read_float32(name), ref.float().numpy())


def test_reader_matches_library_on_a_model_file(make_checkpoints) -> None:
    (folder,) = make_checkpoints(1)
    reference = safetensors.numpy.load_file(str(folder / "model.safetensors"))
    with Checkpoint.open(folder) as ckpt:
        assert set(ckpt.tensors) == set(reference)
        for name, ref in reference.items():
            np.testing.assert_array_equal(ckpt.read_float32(name), ref)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_read_ranges(tmp_path: Path, dtype: str) -> None:
    full = torch.arange(1000, dtype=torch.float32).reshape(40, 25) * 0.37 - 11
    t = full.to(torch.bfloat16) if dtype == "bfloat16" else full
    path = tmp_path / "r.safetensors"
    safetensors.torch.save_file({"pad": torch.ones(3), "t": t}, str(path))
    whole = _bits(t).reshape(-1) if dtype == "bfloat16" else t.numpy().reshape(-1)
    with Checkpoint.open(path) as ckpt:
        storage = ckpt.read("t").dtype
        for start, size in [(0, 1), (0, 1000), (1, 7), (123, 456), (999, 1), (500, 500)]:
            out = np.full(size, 7, dtype=storage)
            got = ckpt.read("t", start, out)
            assert got is out
            np.testing.assert_array_equal(out, whole[start : start + size])
        # without `out`: the rest of the tensor from `start`
        np.testing.assert_array_equal(ckpt.read("t", 990), whole[990:])
        # chunked reads reassemble the tensor
        chunks = []
        buf = np.empty(64, dtype=storage)
        for start in range(0, 1000, 64):
            n = min(64, 1000 - start)
            chunks.append(ckpt.read("t", start, buf[:n]).copy())
        np.testing.assert_array_equal(np.concatenate(chunks), whole)


def test_save_file_loads_with_reference_library(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    plain = {
        "f32": rng.standard_normal((4, 6)).astype(np.float32),
        "f16": rng.standard_normal((3,)).astype(np.float16),
        "i64": np.arange(-5, 5, dtype=np.int64).reshape(2, 5),
        "empty": np.zeros((0, 3), np.float32),
    }
    path = tmp_path / "plain.safetensors"
    save_file(plain, path)
    loaded = safetensors.numpy.load_file(str(path))
    assert set(loaded) == set(plain)
    for name, arr in plain.items():
        assert loaded[name].dtype == arr.dtype
        np.testing.assert_array_equal(loaded[name], arr)
    # data starts 8-byte aligned, as the reference writer does
    (header_len,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert header_len % 8 == 0

    bf = _special_bf16()
    mixed = {"bf": _bits(bf), "f32": plain["f32"]}
    path2 = tmp_path / "mixed.safetensors"
    save_file(mixed, path2, dtypes={"bf": "BF16"})
    loaded_t = safetensors.torch.load_file(str(path2))
    assert loaded_t["bf"].dtype == torch.bfloat16
    assert loaded_t["bf"].shape == bf.shape
    np.testing.assert_array_equal(_bits(loaded_t["bf"]), _bits(bf))
    np.testing.assert_array_equal(loaded_t["f32"].numpy(), plain["f32"])


def test_save_file_roundtrips_through_our_reader(tmp_path: Path) -> None:
    arrays = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array([1.5], np.float16)}
    path = tmp_path / "rt.safetensors"
    save_file(arrays, path)
    with Checkpoint.open(path) as ckpt:
        assert list(ckpt.tensors) == ["b", "a"]  # written in the given order
        np.testing.assert_array_equal(ckpt.read_float32("b"), arrays["b"])
        np.testing.assert_array_equal(ckpt.read("a"), arrays["a"])
        assert ckpt.num_parameters == 7
        assert ckpt.nbytes == 6 * 4 + 2


def _write_shards(folder: Path, arrays: dict[str, np.ndarray], max_bytes: int) -> list:
    planned = [PlannedTensor(n, "F32", a.shape) for n, a in arrays.items()]
    shards = plan_shards(planned, max_shard_bytes=max_bytes)
    for shard in shards:
        fd = os.open(folder / shard.filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.pwrite(fd, shard.header, 0)
            for name, offset in shard.offsets.items():
                pwrite_all(fd, arrays[name], offset)
            os.ftruncate(fd, shard.size)
        finally:
            os.close(fd)
    if len(shards) > 1:
        write_index(folder / "model.safetensors.index.json", shards, sum(t.nbytes for t in planned))
    return shards


def test_plan_shards_output_loads_with_reference_library(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    arrays = {
        "t0": rng.standard_normal(100).astype(np.float32),  # 400 bytes
        "t1": rng.standard_normal(100).astype(np.float32),  # 400
        "big": rng.standard_normal((30, 30)).astype(np.float32),  # 3600: bigger than a shard
        "t3": rng.standard_normal(50).astype(np.float32),  # 200
        "t4": rng.standard_normal(50).astype(np.float32),  # 200
    }
    shards = _write_shards(tmp_path, arrays, max_bytes=1000)
    assert [list(s.offsets) for s in shards] == [["t0", "t1"], ["big"], ["t3", "t4"]]
    assert [s.filename for s in shards] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    for shard in shards:
        assert (tmp_path / shard.filename).stat().st_size == shard.size
        loaded = safetensors.numpy.load_file(str(tmp_path / shard.filename))
        assert set(loaded) == set(shard.offsets)
        for name, arr in loaded.items():
            np.testing.assert_array_equal(arr, arrays[name])
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in arrays.values())
    assert index["weight_map"] == {
        "t0": shards[0].filename,
        "t1": shards[0].filename,
        "big": shards[1].filename,
        "t3": shards[2].filename,
        "t4": shards[2].filename,
    }
    with Checkpoint.open(tmp_path) as ckpt:
        assert list(ckpt.tensors) == list(arrays)
        assert len(ckpt.weight_files) == 3
        for name, arr in arrays.items():
            np.testing.assert_array_equal(ckpt.read_float32(name), arr)


def test_plan_shards_single_shard_is_model_safetensors(tmp_path: Path) -> None:
    arrays = {"a": np.ones(4, np.float32), "b": np.zeros(3, np.float32)}
    shards = _write_shards(tmp_path, arrays, max_bytes=10**9)
    assert [s.filename for s in shards] == ["model.safetensors"]
    assert not (tmp_path / "model.safetensors.index.json").exists()
    loaded = safetensors.numpy.load_file(str(tmp_path / "model.safetensors"))
    np.testing.assert_array_equal(loaded["a"], arrays["a"])
    np.testing.assert_array_equal(loaded["b"], arrays["b"])


def test_sharded_model_folder_loads_with_reference_library(make_checkpoints) -> None:
    (folder,) = make_checkpoints(1, shard_size=20_000)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard_names = sorted(set(index["weight_map"].values()))
    assert len(shard_names) > 1
    merged: dict[str, np.ndarray] = {}
    for shard in shard_names:
        merged.update(safetensors.numpy.load_file(str(folder / shard)))
    assert set(merged) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in merged.values())
    with Checkpoint.open(folder) as ckpt:
        for name, arr in merged.items():
            np.testing.assert_array_equal(ckpt.read_float32(name), arr)


# --- malformed files at the format level (folder-level cases are in test_checkpoint.py) -----------


def _raw_file(path: Path, header: object, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_too_short_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"\x01\x02\x03")
    with pytest.raises(CorruptCheckpointError, match="too short") as e:
        SafetensorsFile(path)
    assert str(path) in str(e.value)


def test_unsupported_dtype_names_tensor(tmp_path: Path) -> None:
    path = _raw_file(
        tmp_path / "d.safetensors", {"w": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8
    )
    with pytest.raises(CorruptCheckpointError, match=r"tensor 'w' has unsupported dtype 'Q9'"):
        SafetensorsFile(path)


def test_offsets_that_do_not_match_shape_name_tensor(tmp_path: Path) -> None:
    path = _raw_file(
        tmp_path / "o.safetensors",
        {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}},
        b"\0" * 24,
    )
    with pytest.raises(CorruptCheckpointError, match=r"'w'.*\[2, 3\].*needs 24"):
        SafetensorsFile(path)


def test_malformed_entry_names_tensor(tmp_path: Path) -> None:
    path = _raw_file(tmp_path / "m.safetensors", {"w": {"shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8)
    with pytest.raises(CorruptCheckpointError, match=r"tensor 'w' has a malformed header entry"):
        SafetensorsFile(path)


def test_negative_dimension(tmp_path: Path) -> None:
    path = _raw_file(
        tmp_path / "n.safetensors", {"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}
    )
    with pytest.raises(CorruptCheckpointError, match="negative dimension"):
        SafetensorsFile(path)


def test_header_not_an_object(tmp_path: Path) -> None:
    path = _raw_file(tmp_path / "l.safetensors", [1, 2, 3])
    with pytest.raises(CorruptCheckpointError, match="not a JSON object"):
        SafetensorsFile(path)
