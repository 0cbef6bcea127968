"""What every merge method's soup folder promises, checked for each method in soce.merging.METHODS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from soce.checkpoints import TOKENIZER_FILES, Checkpoint, DigestCache, checkpoint_hash
from soce.merging import METHODS, load_recipe, write_soup
from soce.schemas.merge import MergeRecipe

WEIGHTS = (0.5, 0.3, 0.2)
Inputs = tuple[list[Path], Path]


def recipe_for(method: str, cands: list[Path], base: Path, **extra) -> MergeRecipe:
    weighted = [{"path": str(p), "weight": w} for p, w in zip(cands, WEIGHTS, strict=True)]
    plain = [str(p) for p in cands]
    table = {
        "linear": {"candidates": weighted},
        "uniform": {"candidates": plain},
        "layerwise": {
            "candidates": plain,
            "parameters": {
                "groups": 2,
                "embed": [1, 1, 2],
                "blocks": [[3, 2, 1], [1, 2, 3]],
                "norm": [1, 0, 1],
            },
        },
        "task_arithmetic": {"candidates": weighted, "base": str(base), "parameters": {"lambda": 0.8}},
        "ties": {"candidates": weighted, "base": str(base), "parameters": {"density": 0.5}},
        "dare": {"candidates": weighted, "base": str(base), "parameters": {"density": 0.5, "seed": 3}},
    }
    assert set(table) == set(METHODS), "a method was added: give it a recipe here"
    return MergeRecipe(method=method, **table[method], **extra)


MERGEKIT_NAMES = {
    "linear": "linear",
    "uniform": "linear",
    "layerwise": "linear",
    "task_arithmetic": "task_arithmetic",
    "ties": "ties",
    "dare": "dare_linear",
}


def test_every_method_is_covered() -> None:
    assert set(MERGEKIT_NAMES) == set(METHODS)


def front_matter(readme: str) -> dict:
    assert readme.startswith("---\n")
    head, _, _ = readme[4:].partition("\n---\n")
    return yaml.safe_load(head)


@pytest.mark.parametrize("method", sorted(METHODS))
class TestMethodContract:
    @pytest.fixture
    def inputs(self, make_checkpoints) -> Inputs:
        *cands, base = make_checkpoints(3, with_base=True, layers=2)
        return cands, base

    @pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
    def test_same_tensors_and_dtype_as_inputs(self, method: str, dtype: str, make_checkpoints, tmp_path):
        *cands, base = make_checkpoints(3, with_base=True, dtype=dtype)
        soup = write_soup(recipe_for(method, cands, base), tmp_path / "soup")
        assert soup.method == method and soup.dtype == dtype
        ref = Checkpoint.open(cands[0])
        with Checkpoint.open(soup.path) as out:
            assert list(out.tensors) == list(ref.tensors)
            for name, info in ref.tensors.items():
                assert out.tensors[name].shape == info.shape, name
                assert out.tensors[name].dtype == info.dtype == {"float32": "F32", "bfloat16": "BF16"}[dtype]
        assert json.loads((soup.path / "config.json").read_text())["dtype"] == dtype
        # the soup is an actual mixture: neither a copy of an input nor all zeros
        got = load_file(soup.path / "model.safetensors")
        first = load_file(cands[0] / "model.safetensors")
        emb = "model.embed_tokens.weight"
        assert not torch.equal(got[emb], first[emb])
        assert got[emb].float().abs().sum() > 0
        ref.close()

    def test_dtype_override(self, method: str, inputs: Inputs, make_checkpoints, tmp_path: Path):
        cands, base = inputs
        f32 = write_soup(recipe_for(method, cands, base), tmp_path / "f32")
        a = load_file(f32.path / "model.safetensors")
        for dtype in ("bfloat16", "float16"):
            soup = write_soup(recipe_for(method, cands, base, dtype=dtype), tmp_path / dtype)
            assert soup.dtype == dtype
            assert json.loads((soup.path / "config.json").read_text())["dtype"] == dtype
            b = load_file(soup.path / "model.safetensors")
            assert set(a) == set(b)
            for name in a:
                assert b[name].dtype == getattr(torch, dtype)
                # merged in float32, rounded once at the end
                assert torch.equal(b[name], a[name].to(getattr(torch, dtype))), name
            mk = yaml.safe_load((soup.path / "mergekit_config.yml").read_text())
            assert mk["out_dtype"] == dtype
        # and the other way: bfloat16 inputs written as float32
        *bf_cands, bf_base = make_checkpoints(3, with_base=True, dtype="bfloat16")
        bf = write_soup(recipe_for(method, bf_cands, bf_base), tmp_path / "bf")
        up = write_soup(recipe_for(method, bf_cands, bf_base, dtype="float32"), tmp_path / "up")
        x, y = load_file(bf.path / "model.safetensors"), load_file(up.path / "model.safetensors")
        for name in x:
            assert y[name].dtype == torch.float32
            assert torch.equal(y[name].to(torch.bfloat16), x[name]), name

    def test_folder_contents_and_model_card(self, method: str, inputs: Inputs, tmp_path: Path):
        cands, base = inputs
        recipe = recipe_for(method, cands, base)
        soup = write_soup(recipe, tmp_path / "soup")
        files = {p.name for p in soup.path.iterdir()}
        tokenizer = {n for n in TOKENIZER_FILES if (cands[0] / n).is_file()}
        assert tokenizer, "the example checkpoints have tokenizer files"
        expected = {
            "model.safetensors",
            "config.json",
            "generation_config.json",
            "README.md",
            "soce_recipe.yml",
            "mergekit_config.yml",
            *tokenizer,
        }
        assert files == expected
        for name in ("generation_config.json", *tokenizer):
            assert (soup.path / name).read_bytes() == (cands[0] / name).read_bytes()

        readme = (soup.path / "README.md").read_text()
        front = front_matter(readme)
        assert {"merge", "model-soup"} <= set(front["tags"])
        inputs_used = [*cands, base] if recipe.base else cands
        for p, ingredient in zip(inputs_used, [*soup.ingredients, soup.base], strict=False):
            h = checkpoint_hash(Checkpoint.open(p), DigestCache(None))
            assert h in readme, p
            assert ingredient.content_hash == h
            assert str(Path(p).resolve()) in readme
        assert (soup.base is not None) == (recipe.base is not None)

        mk = yaml.safe_load((soup.path / "mergekit_config.yml").read_text())
        assert mk["merge_method"] == MERGEKIT_NAMES[method]
        assert [m["model"] for m in mk["models"]] == [str(Path(c).resolve()) for c in cands]
        assert mk.get("base_model") == (str(Path(base).resolve()) if recipe.base else None)
        assert soup.mergekit_config is True

    def test_recipe_replays_to_identical_bytes(self, method: str, inputs: Inputs, tmp_path: Path):
        cands, base = inputs
        first = write_soup(recipe_for(method, cands, base, dtype="bfloat16"), tmp_path / "first")
        replay = load_recipe(first.path / "soce_recipe.yml")
        assert replay.method == method
        second = write_soup(replay, tmp_path / "elsewhere" / "second")
        for name in ("model.safetensors", "config.json", "soce_recipe.yml", "mergekit_config.yml"):
            assert (second.path / name).read_bytes() == (first.path / name).read_bytes(), name
        assert [i.content_hash for i in second.ingredients] == [i.content_hash for i in first.ingredients]


def test_content_hashes_ignore_sharding_and_path(make_checkpoints, tmp_path: Path) -> None:
    whole = make_checkpoints(2, seed=3)
    sharded = make_checkpoints(2, seed=3, shard_size=20_000)
    a = write_soup(MergeRecipe(method="uniform", candidates=[str(p) for p in whole]), tmp_path / "a")
    b = write_soup(MergeRecipe(method="uniform", candidates=[str(p) for p in sharded]), tmp_path / "b")
    assert [i.content_hash for i in a.ingredients] == [i.content_hash for i in b.ingredients]
    other = make_checkpoints(2, seed=4)
    c = write_soup(MergeRecipe(method="uniform", candidates=[str(p) for p in other]), tmp_path / "c")
    assert not {i.content_hash for i in c.ingredients} & {i.content_hash for i in a.ingredients}
    assert len({i.content_hash for i in a.ingredients}) == 2
