"""Soup files on disk: sharding, exact bfloat16 rounding, tied embeddings, and atomic output."""

from __future__ import annotations

import errno
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import soce.merging.engine as engine
from soce.checkpoints import Checkpoint, save_file
from soce.errors import IncompatibleCheckpointsError, OutputExistsError
from soce.merging import write_soup
from soce.merging.linear import Linear
from soce.schemas.merge import MergeRecipe


def linear(paths: list[Path] | list[str], weights=(0.5, 0.3, 0.2), **extra) -> MergeRecipe:
    cands = [{"path": str(p), "weight": w} for p, w in zip(paths, weights, strict=True)]
    return MergeRecipe(method="linear", candidates=cands, **extra)


def load_soup(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.exists()
        else ["model.safetensors"]
    )
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(folder / f))
    return out


# --- sharding --------------------------------------------------------------------------------


def test_sharded_output(make_checkpoints, tmp_path: Path) -> None:
    cands = make_checkpoints(3)
    whole = write_soup(linear(cands), tmp_path / "whole")
    soup = write_soup(linear(cands, shard_size=20_000), tmp_path / "sharded")
    n = soup.shards
    assert n >= 3 and whole.shards == 1
    shard_names = sorted(p.name for p in soup.path.glob("*.safetensors"))
    assert shard_names == [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
    assert not (soup.path / "model.safetensors").exists()

    index = json.loads((soup.path / "model.safetensors.index.json").read_text())
    ref = Checkpoint.open(cands[0])
    assert set(index["weight_map"]) == set(ref.tensors)
    assert index["metadata"]["total_size"] == ref.nbytes == soup.nbytes
    for shard in shard_names:
        in_file = set(load_file(soup.path / shard))
        assert in_file == {t for t, f in index["weight_map"].items() if f == shard}
        assert (soup.path / shard).stat().st_size <= 20_000 + 4096  # data plus a small header
    ref.close()

    a, b = load_soup(whole.path), load_soup(soup.path)
    assert set(a) == set(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # and the sharded soup opens as a checkpoint again
    with Checkpoint.open(soup.path) as again:
        assert set(again.tensors) == set(a)


@pytest.mark.parametrize("method", ["linear", "ties"])
def test_sharded_inputs_give_identical_output(make_checkpoints, tmp_path: Path, method: str) -> None:
    *whole, whole_base = make_checkpoints(3, seed=5, with_base=True)
    *sharded, sharded_base = make_checkpoints(3, seed=5, with_base=True, shard_size=10_000)
    assert (Path(sharded[0]) / "model.safetensors.index.json").is_file()

    def recipe(paths, base):
        r = linear(paths)
        if method == "ties":
            r = r.model_copy(update={"method": "ties", "base": str(base), "parameters": {"density": 0.5}})
        return r

    a = write_soup(recipe(whole, whole_base), tmp_path / "a")
    b = write_soup(recipe(sharded, sharded_base), tmp_path / "b")
    assert (a.path / "model.safetensors").read_bytes() == (b.path / "model.safetensors").read_bytes()


# --- bfloat16 rounding -------------------------------------------------------------------------


def test_bfloat16_soup_matches_torch_bit_for_bit(make_checkpoints, tmp_path: Path) -> None:
    weights = (0.5, 0.3, 0.2)
    cands = make_checkpoints(3, dtype="bfloat16", spread=1.0)
    soup = load_soup(write_soup(linear(cands, weights), tmp_path / "soup").path)
    inputs = [load_file(Path(c) / "model.safetensors") for c in cands]
    coeffs = [float(np.float32(w / sum(weights))) for w in weights]
    for name, got in soup.items():
        assert got.dtype == torch.bfloat16
        acc = inputs[0][name].float() * coeffs[0]
        for x, c in zip(inputs[1:], coeffs[1:], strict=True):
            acc = acc + x[name].float() * c
        assert torch.equal(got, acc.to(torch.bfloat16)), name


def _bf16_file(folder: Path, values: np.ndarray) -> str:
    folder.mkdir()
    bits = torch.tensor(values, dtype=torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    save_file({"x": bits}, folder / "model.safetensors", dtypes={"x": "BF16"})
    return str(folder)


def test_bfloat16_rounds_halfway_cases_to_even(tmp_path: Path) -> None:
    # 1 + k/128 (k = 0..127) are consecutive bfloat16 values; adding 1/256 lands exactly halfway
    k = np.arange(128, dtype=np.float64)
    x = np.concatenate([1 + k / 128, -(1 + k / 128), 2 + k / 64])
    y = np.concatenate([np.full(128, 1 / 256), np.full(128, -1 / 256), np.full(128, 1 / 128)])
    paths = [_bf16_file(tmp_path / "x", x), _bf16_file(tmp_path / "y", y)]
    recipe = linear(paths, (1.0, 1.0), parameters={"normalize": False})
    got = load_soup(write_soup(recipe, tmp_path / "soup").path)["x"].double().numpy()
    even_up = np.where(k % 2 == 0, k, k + 1)  # ties go to the even neighbour
    want = np.concatenate([1 + even_up / 128, -(1 + even_up / 128), 2 + even_up / 64])
    np.testing.assert_array_equal(got, want)
    f32 = torch.tensor(x, dtype=torch.float32) + torch.tensor(y, dtype=torch.float32)
    torch_says = f32.to(torch.bfloat16)
    np.testing.assert_array_equal(got, torch_says.double().numpy())


# --- tied embeddings -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tied_embeddings_soup_loads_with_transformers(make_checkpoints, tmp_path: Path, dtype: str) -> None:
    from transformers import AutoModelForCausalLM

    cands = make_checkpoints(3, tied=True, dtype=dtype)
    soup = write_soup(linear(cands), tmp_path / "soup")
    tensors = load_soup(soup.path)
    assert "lm_head.weight" not in tensors and "model.embed_tokens.weight" in tensors
    model = AutoModelForCausalLM.from_pretrained(soup.path, dtype=getattr(torch, dtype))
    assert model.config.tie_word_embeddings is True
    emb, head = model.model.embed_tokens.weight, model.lm_head.weight
    assert head.data_ptr() == emb.data_ptr()
    assert torch.equal(emb, tensors["model.embed_tokens.weight"])
    assert torch.equal(
        model.model.layers[1].mlp.down_proj.weight, tensors["model.layers.1.mlp.down_proj.weight"]
    )
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 13]])).logits
    assert torch.isfinite(logits).all()


# --- atomic output ------------------------------------------------------------------------------


def leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if re.match(rf"\.{re.escape(name)}\.(partial|old)-", p.name)]


class Boom(RuntimeError):
    pass


def failing_on_call(n: int, original):
    calls = 0
    lock = threading.Lock()

    def wrapper(*args, **kwargs):
        nonlocal calls
        with lock:
            calls += 1
            if calls == n:
                raise Boom(f"call {n}")
        return original(*args, **kwargs)

    return wrapper


def test_failing_merge_leaves_nothing(make_checkpoints, tmp_path: Path, monkeypatch) -> None:
    cands = make_checkpoints(3)
    monkeypatch.setattr(Linear, "merge", failing_on_call(5, Linear.merge))
    out = tmp_path / "out" / "soup"
    with pytest.raises(Boom):
        write_soup(linear(cands), out)
    assert not out.exists()
    assert leftovers(out.parent, "soup") == []
    assert list(out.parent.iterdir()) == []


def test_failing_write_leaves_nothing(make_checkpoints, tmp_path: Path, monkeypatch) -> None:
    cands = make_checkpoints(3)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(engine, "pwrite_all", failing_on_call(3, engine.pwrite_all))
    out = tmp_path / "soup"
    with pytest.raises(Boom):
        write_soup(linear(cands), out)
    assert not out.exists() and leftovers(tmp_path, "soup") == []
    monkeypatch.setattr(engine, "pwrite_all", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_soup(linear(cands, shard_size=20_000), out)
    assert not out.exists() and leftovers(tmp_path, "soup") == []


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_existing_output_is_refused_then_replaced_with_force(
    make_checkpoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cands = make_checkpoints(3)
    out = tmp_path / "soup"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    before = snapshot(out)
    with pytest.raises(OutputExistsError, match="already exists"):
        write_soup(linear(cands), out)
    assert snapshot(out) == before and leftovers(tmp_path, "soup") == []

    # a forced merge that fails leaves the existing folder as it was
    with monkeypatch.context() as m:
        m.setattr(Linear, "merge", failing_on_call(5, Linear.merge))
        with pytest.raises(Boom):
            write_soup(linear(cands), out, force=True)
    assert snapshot(out) == before and leftovers(tmp_path, "soup") == []

    soup = write_soup(linear(cands), out, force=True)
    assert soup.path == out
    assert not (out / "keep.txt").exists()
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    assert leftovers(tmp_path, "soup") == []


def test_force_replacing_a_file_leaves_nothing_behind(make_checkpoints, tmp_path: Path) -> None:
    cands = make_checkpoints(3)
    out = tmp_path / "soup"
    out.write_text("not a folder")
    write_soup(linear(cands), out, force=True)
    assert (out / "model.safetensors").is_file()
    assert leftovers(tmp_path, "soup") == []


def test_output_that_is_or_contains_an_input_is_refused(make_checkpoints, tmp_path: Path) -> None:
    cands = make_checkpoints(3)
    root = Path(cands[0]).parent
    before = {c: snapshot(Path(c)) for c in cands}
    for target in (cands[1], root, tmp_path):
        with pytest.raises(OutputExistsError, match="would overwrite the input"):
            write_soup(linear(cands), target, force=True)
    assert {c: snapshot(Path(c)) for c in cands} == before


def test_output_inside_an_input_folder_is_refused(make_checkpoints) -> None:
    cands = make_checkpoints(3)
    before = snapshot(Path(cands[0]))
    with pytest.raises(OutputExistsError):
        write_soup(linear(cands), Path(cands[0]) / "soup")
    assert snapshot(Path(cands[0])) == before


def test_incompatible_inputs_write_nothing(make_checkpoints, tmp_path: Path) -> None:
    small = make_checkpoints(2)
    big = make_checkpoints(1, hidden=48)
    out = tmp_path / "new" / "soup"
    with pytest.raises(IncompatibleCheckpointsError, match="shape"):
        write_soup(linear([*small, *big]), out)
    assert not out.parent.exists()
