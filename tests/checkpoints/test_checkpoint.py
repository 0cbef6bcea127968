"""Opening checkpoints: single files, shards, tied embeddings, pickles, and every kind of bad input."""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from soce.checkpoints import Checkpoint, save_file
from soce.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    PickleRefusedError,
)
from soce.zoo import LlamaShape


class NotATensor:
    """Pickled by reference; torch.load(weights_only=True) refuses to import it."""

    def __init__(self) -> None:
        self.x = 1


def _expected_parameters(shape: LlamaShape) -> int:
    return sum(math.prod(dims) for _, dims in shape.tensors())


# --- good checkpoints -----------------------------------------------------------------------------


def test_open_single_file_folder(make_checkpoints) -> None:
    (folder,) = make_checkpoints(1)
    shape = LlamaShape()
    with Checkpoint.open(folder) as ckpt:
        assert ckpt.path == folder
        assert ckpt.folder == folder
        assert not ckpt.is_pickle
        assert ckpt.weight_files == [folder / "model.safetensors"]
        assert list(ckpt.tensors) == [name for name, _ in shape.tensors()]
        for name, dims in shape.tensors():
            assert ckpt.tensors[name].shape == dims
            assert ckpt.tensors[name].dtype == "F32"
        n = _expected_parameters(shape)
        assert ckpt.num_parameters == n
        assert ckpt.nbytes == 4 * n
        assert ckpt.dtype == "F32"
        assert ckpt.tied_embeddings is False
        # config parsed
        assert ckpt.config is not None
        assert ckpt.config["model_type"] == "llama"
        assert ckpt.config["hidden_size"] == 32
        assert ckpt.config["num_hidden_layers"] == 2
        assert ckpt.config["architectures"] == ["LlamaForCausalLM"]
        assert {p.name for p in ckpt.tokenizer_files} >= {"tokenizer.json", "tokenizer_config.json"}
        reference = safetensors.numpy.load_file(str(folder / "model.safetensors"))
        for name, arr in reference.items():
            np.testing.assert_array_equal(ckpt.read_float32(name), arr)


def test_open_the_safetensors_file_itself(make_checkpoints) -> None:
    (folder,) = make_checkpoints(1)
    with Checkpoint.open(folder / "model.safetensors") as by_file, Checkpoint.open(folder) as by_folder:
        assert by_file.folder == folder
        assert by_file.config == by_folder.config
        assert list(by_file.tensors) == list(by_folder.tensors)
        np.testing.assert_array_equal(
            by_file.read_float32("lm_head.weight"), by_folder.read_float32("lm_head.weight")
        )


def test_sharded_equals_unsharded(make_checkpoints) -> None:
    (single,) = make_checkpoints(1)
    (sharded,) = make_checkpoints(1, shard_size=20_000)
    assert (sharded / "model.safetensors.index.json").is_file()
    assert not (sharded / "model.safetensors").exists()
    with Checkpoint.open(single) as a, Checkpoint.open(sharded) as b:
        assert len(b.weight_files) > 1
        assert all(f.parent == sharded for f in b.weight_files)
        assert list(a.tensors) == list(b.tensors)
        assert a.num_parameters == b.num_parameters
        assert a.nbytes == b.nbytes
        assert a.config == b.config
        for name, info in a.tensors.items():
            assert b.tensors[name].shape == info.shape
            assert b.tensors[name].dtype == info.dtype
            np.testing.assert_array_equal(a.read(name), b.read(name))


def test_different_seeds_give_different_weights(make_checkpoints) -> None:
    (a,) = make_checkpoints(1, seed=0)
    (b,) = make_checkpoints(1, seed=1)
    with Checkpoint.open(a) as ca, Checkpoint.open(b) as cb:
        assert not np.array_equal(ca.read("lm_head.weight"), cb.read("lm_head.weight"))


def test_tied_embeddings(make_checkpoints) -> None:
    (tied,) = make_checkpoints(1, tied=True)
    (untied,) = make_checkpoints(1)
    with Checkpoint.open(tied) as t, Checkpoint.open(untied) as u:
        assert t.tied_embeddings is True
        assert u.tied_embeddings is False
        assert "lm_head.weight" not in t.tensors
        assert "lm_head.weight" in u.tensors
        vocab, hidden = u.tensors["lm_head.weight"].shape
        assert t.num_parameters == u.num_parameters - vocab * hidden
        assert t.num_parameters == _expected_parameters(LlamaShape(tied=True))


@pytest.mark.parametrize(("dtype", "code", "size"), [("bfloat16", "BF16", 2), ("float16", "F16", 2)])
def test_half_precision_checkpoint(make_checkpoints, dtype: str, code: str, size: int) -> None:
    (folder,) = make_checkpoints(1, dtype=dtype)
    reference = safetensors.torch.load_file(str(folder / "model.safetensors"))
    with Checkpoint.open(folder) as ckpt:
        assert ckpt.dtype == code
        assert ckpt.nbytes == size * ckpt.num_parameters
        assert ckpt.config["dtype"] == dtype
        for name, t in reference.items():
            np.testing.assert_array_equal(ckpt.read_float32(name), t.float().numpy())


def test_read_float32_refuses_integer_tensor(tmp_path: Path) -> None:
    path = tmp_path / "ints.safetensors"
    save_file({"ids": np.arange(4, dtype=np.int64)}, path)
    with Checkpoint.open(path) as ckpt, pytest.raises(CheckpointError, match="'ids'"):
        ckpt.read_float32("ids")


# --- bad input -------------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointNotFoundError, match="no such file or folder") as e:
        Checkpoint.open(missing)
    assert str(missing) in str(e.value)


def test_folder_without_weights(make_checkpoints) -> None:
    (folder,) = make_checkpoints(1)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointNotFoundError, match="no weights found") as e:
        Checkpoint.open(folder)
    assert str(folder) in str(e.value)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="no weights found"):
        Checkpoint.open(tmp_path)


def test_file_that_is_not_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "weights.npz"
    path.write_bytes(b"whatever")
    with pytest.raises(CheckpointNotFoundError, match=r"not a \.safetensors file") as e:
        Checkpoint.open(path)
    assert str(path) in str(e.value)


def test_truncated_safetensors_names_file_and_tensor(make_checkpoints) -> None:
    (folder,) = make_checkpoints(1)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-100])  # the last tensor on disk is lm_head.weight
    with pytest.raises(CorruptCheckpointError, match="truncated") as e:
        Checkpoint.open(folder)
    assert str(weights) in str(e.value)
    assert "lm_head.weight" in str(e.value)


def test_truncated_inside_header(make_checkpoints) -> None:
    (folder,) = make_checkpoints(1)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(CorruptCheckpointError, match="truncated") as e:
        Checkpoint.open(folder)
    assert str(weights) in str(e.value)


def test_garbage_header(make_checkpoints) -> None:
    (folder,) = make_checkpoints(1)
    weights = folder / "model.safetensors"
    garbage = b"\xff\xfe not json at all {{{"
    weights.write_bytes(struct.pack("<Q", len(garbage)) + garbage + b"\0" * 64)
    with pytest.raises(CorruptCheckpointError, match="not valid JSON") as e:
        Checkpoint.open(folder)
    assert str(weights) in str(e.value)


def test_random_bytes_are_not_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CorruptCheckpointError) as e:
        Checkpoint.open(tmp_path)
    assert str(path) in str(e.value)


def test_header_length_bigger_than_file(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    path.write_bytes(struct.pack("<Q", len(header) + 1000) + header + b"\0" * 4)
    with pytest.raises(CorruptCheckpointError, match=r"header length \d+ does not fit") as e:
        Checkpoint.open(tmp_path)
    assert str(path) in str(e.value)


def test_index_naming_a_missing_shard(make_checkpoints) -> None:
    (folder,) = make_checkpoints(1, shard_size=20_000)
    index = folder / "model.safetensors.index.json"
    shard = sorted(set(json.loads(index.read_text())["weight_map"].values()))[1]
    (folder / shard).unlink()
    with pytest.raises(CheckpointNotFoundError) as e:
        Checkpoint.open(folder)
    assert shard in str(e.value)
    assert str(index) in str(e.value)


@pytest.mark.parametrize("where", ["absolute", "climbs out", "not a name"])
def test_index_naming_a_shard_outside_its_folder(make_checkpoints, where: str) -> None:
    """An index is data: a shard it names must be a file of the checkpoint's own folder."""
    (folder,) = make_checkpoints(1, shard_size=20_000)
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = sorted(set(data["weight_map"].values()))[0]
    elsewhere = folder.parent / "elsewhere.safetensors"
    (folder / first).rename(elsewhere)  # a real shard, moved beside the folder
    target = {"absolute": str(elsewhere), "climbs out": "../elsewhere.safetensors", "not a name": 7}[where]
    data["weight_map"] = {k: (target if v == first else v) for k, v in data["weight_map"].items()}
    index.write_text(json.dumps(data))
    with pytest.raises(CorruptCheckpointError) as e:
        Checkpoint.open(folder)
    assert str(index) in str(e.value)
    message = "is not a file name" if where == "not a name" else "is outside the checkpoint folder"
    assert message in str(e.value)


def test_index_listing_tensor_absent_from_its_shard(make_checkpoints) -> None:
    (folder,) = make_checkpoints(1, shard_size=20_000)
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["model.phantom.weight"] = next(iter(data["weight_map"].values()))
    index.write_text(json.dumps(data))
    with pytest.raises(CorruptCheckpointError, match=r"model\.phantom\.weight"):
        Checkpoint.open(folder)


def test_index_without_weight_map(make_checkpoints) -> None:
    (folder,) = make_checkpoints(1, shard_size=20_000)
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CorruptCheckpointError, match="weight_map") as e:
        Checkpoint.open(folder)
    assert str(index) in str(e.value)


def test_unreadable_index(make_checkpoints) -> None:
    (folder,) = make_checkpoints(1, shard_size=20_000)
    index = folder / "model.safetensors.index.json"
    index.write_text("{ not json")
    with pytest.raises(CheckpointError, match="cannot be read as JSON") as e:
        Checkpoint.open(folder)
    assert str(index) in str(e.value)


def test_broken_config_json_is_named(make_checkpoints) -> None:
    (folder,) = make_checkpoints(1)
    (folder / "config.json").write_text("{ broken")
    with pytest.raises(CheckpointError, match=r"config\.json"):
        Checkpoint.open(folder)


# --- pickle checkpoints ----------------------------------------------------------------------------


def _pickle_folder(make_checkpoints, state: dict) -> Path:
    """A model folder (config, tokenizer) whose only weights are `state` in pytorch_model.bin."""
    (folder,) = make_checkpoints(1)
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def test_pickle_refused_without_opt_in(make_checkpoints) -> None:
    folder = _pickle_folder(make_checkpoints, {"w": torch.ones(3)})
    with pytest.raises(PickleRefusedError, match=r"pytorch_model\.bin") as e:
        Checkpoint.open(folder)
    assert "--allow-pickle" in str(e.value)
    assert str(folder) in str(e.value)


def test_safetensors_preferred_over_pickle(make_checkpoints) -> None:
    (folder,) = make_checkpoints(1)
    torch.save({"w": torch.ones(3)}, folder / "pytorch_model.bin")
    with Checkpoint.open(folder) as ckpt:  # no PickleRefusedError: safetensors are used
        assert not ckpt.is_pickle
        assert "lm_head.weight" in ckpt.tensors


def test_pickle_opt_in_float32_and_bfloat16(make_checkpoints) -> None:
    g = torch.Generator().manual_seed(0)
    f32 = torch.randn(6, 5, generator=g)
    bf16 = (torch.randn(4, 8, generator=g) * 3).to(torch.bfloat16)
    ids = torch.arange(7, dtype=torch.int64)
    folder = _pickle_folder(make_checkpoints, {"a.weight": f32, "b.weight": bf16, "ids": ids})
    with Checkpoint.open(folder, allow_pickle=True) as ckpt:
        assert ckpt.is_pickle
        assert ckpt.tensors["a.weight"].dtype == "F32"
        assert ckpt.tensors["b.weight"].dtype == "BF16"
        assert ckpt.tensors["ids"].dtype == "I64"
        assert ckpt.tensors["a.weight"].shape == (6, 5)
        assert ckpt.tensors["b.weight"].shape == (4, 8)
        assert ckpt.num_parameters == 30 + 32 + 7
        assert ckpt.nbytes == 30 * 4 + 32 * 2 + 7 * 8
        assert ckpt.weight_files == [folder / "pytorch_model.bin"]
        assert ckpt.config is not None and ckpt.config["model_type"] == "llama"
        np.testing.assert_array_equal(ckpt.read_float32("a.weight"), f32.numpy())
        np.testing.assert_array_equal(
            ckpt.read("b.weight"), bf16.view(torch.int16).numpy().view(np.uint16).ravel()
        )
        np.testing.assert_array_equal(ckpt.read_float32("b.weight"), bf16.float().numpy())
        np.testing.assert_array_equal(ckpt.read("ids"), ids.numpy())
        out = np.empty(4, np.float32)
        np.testing.assert_array_equal(ckpt.read("a.weight", 10, out), f32.numpy().ravel()[10:14])


def test_pickle_with_refused_object(make_checkpoints) -> None:
    folder = _pickle_folder(make_checkpoints, {"w": torch.ones(2), "obj": NotATensor()})
    with pytest.raises(CorruptCheckpointError, match="weights_only") as e:
        Checkpoint.open(folder, allow_pickle=True)
    assert str(folder / "pytorch_model.bin") in str(e.value)


def test_pickle_with_non_tensor_value(make_checkpoints) -> None:
    folder = _pickle_folder(make_checkpoints, {"w": torch.ones(2), "step": 3})
    with pytest.raises(CorruptCheckpointError, match=r"entry 'step' is not a tensor"):
        Checkpoint.open(folder, allow_pickle=True)


def test_pickle_that_is_not_torch_at_all(make_checkpoints) -> None:
    (folder,) = make_checkpoints(1)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"definitely not a pickle")
    with pytest.raises(CorruptCheckpointError) as e:
        Checkpoint.open(folder, allow_pickle=True)
    assert "pytorch_model.bin" in str(e.value)


def test_pickle_whose_top_level_is_not_a_dict(make_checkpoints) -> None:
    folder = _pickle_folder(make_checkpoints, [torch.ones(2)])  # type: ignore[arg-type]
    with pytest.raises(CorruptCheckpointError, match=r"pytorch_model\.bin"):
        Checkpoint.open(folder, allow_pickle=True)


def test_copied_folder_opens_identically(make_checkpoints, tmp_path: Path) -> None:
    (folder,) = make_checkpoints(1)
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(folder, copy)
    with Checkpoint.open(folder) as a, Checkpoint.open(copy) as b:
        assert b.path == copy
        assert a.config == b.config
        np.testing.assert_array_equal(a.read("model.norm.weight"), b.read("model.norm.weight"))
