"""In-memory merging into a resident transformers model gives the soup writer's tensors, bit for bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, LlamaForCausalLM

from soce.checkpoints import Checkpoint
from soce.errors import RecipeError
from soce.merging import prepare_merge, write_soup
from soce.merging.in_memory import load_experts, merge_into
from soce.schemas.merge import MergeRecipe


def model_for(folder: Path, dtype: torch.dtype) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(AutoConfig.from_pretrained(folder)).to(dtype).eval()


def experts_of(paths: list[Path]) -> list[dict[str, torch.Tensor]]:
    ckpts = [Checkpoint.open(p) for p in paths]
    try:
        return load_experts(ckpts)
    finally:
        for c in ckpts:
            c.close()


def linear(paths: list[Path], weights) -> MergeRecipe:
    cands = [{"path": str(p), "weight": w} for p, w in zip(paths, weights, strict=True)]
    return MergeRecipe(method="linear", candidates=cands)


def assert_model_is_soup(model: torch.nn.Module, soup_dir: Path) -> None:
    soup = load_file(soup_dir / "model.safetensors")
    params = dict(model.named_parameters())
    assert set(params) == set(soup)
    for name, p in params.items():
        assert p.dtype == soup[name].dtype, name
        assert torch.equal(p.detach(), soup[name]), name


@pytest.mark.parametrize(("dtype", "torch_dtype"), [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_merge_into_equals_the_written_soup(make_checkpoints, tmp_path: Path, dtype, torch_dtype) -> None:
    cands = make_checkpoints(3, dtype=dtype, spread=1.0)
    weights = [0.5, 0.3, 0.2]
    soup = write_soup(linear(cands, weights), tmp_path / "soup")
    experts = experts_of(cands)
    assert all(t.dtype == torch_dtype for e in experts for t in e.values())
    model = model_for(cands[0], torch_dtype)
    merge_into(model, experts, weights)
    assert_model_is_soup(model, soup.path)


def test_merge_into_with_a_layerwise_method(make_checkpoints, tmp_path: Path) -> None:
    cands = make_checkpoints(3, dtype="bfloat16", layers=4)
    recipe = MergeRecipe(
        method="layerwise",
        candidates=[str(c) for c in cands],
        parameters={
            "groups": 2,
            "embed": [1, 0, 0],
            "blocks": [[3, 2, 1], [1, 2, 3]],
            "norm": [0, 0, 1],
            "head": [1, 1, 6],
            "patterns": [{"pattern": r"layers\.3\.mlp", "weights": [0, 1, 0]}],
        },
    )
    soup = write_soup(recipe, tmp_path / "soup")
    prepared = prepare_merge(recipe)
    prepared.close()
    model = model_for(cands[0], torch.bfloat16)
    merge_into(model, experts_of(cands), prepared.method)
    assert_model_is_soup(model, soup.path)
    # the groups really differ: the embedding is the first candidate's own
    first = load_file(Path(cands[0]) / "model.safetensors")
    assert torch.equal(model.model.embed_tokens.weight, first["model.embed_tokens.weight"])
    assert not torch.equal(model.lm_head.weight, first["lm_head.weight"])


@pytest.mark.parametrize("torch_dtype", [torch.float32, torch.bfloat16])
def test_merge_into_twice_gives_the_second_result(make_checkpoints, tmp_path: Path, torch_dtype) -> None:
    cands = make_checkpoints(3, dtype="float32" if torch_dtype == torch.float32 else "bfloat16")
    soup = write_soup(linear(cands, [0.2, 0.3, 0.5]), tmp_path / "soup")
    model = model_for(cands[0], torch_dtype)
    experts = experts_of(cands)
    merge_into(model, experts, [0.9, 0.05, 0.05])
    merge_into(model, experts, [0.2, 0.3, 0.5])
    assert_model_is_soup(model, soup.path)


def test_merge_into_tied_model(make_checkpoints, tmp_path: Path) -> None:
    cands = make_checkpoints(2, tied=True)
    soup = write_soup(linear(cands, [0.25, 0.75]), tmp_path / "soup")
    model = model_for(cands[0], torch.float32)
    merge_into(model, experts_of(cands), [0.25, 0.75])
    assert_model_is_soup(model, soup.path)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_merge_into_errors(make_checkpoints) -> None:
    cands = make_checkpoints(3)
    model = model_for(cands[0], torch.float32)
    experts = experts_of(cands)
    del experts[1]["model.layers.1.mlp.up_proj.weight"]
    missing = r"expert #1 has no tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"
    with pytest.raises(RecipeError, match=missing):
        merge_into(model, experts, [0.2, 0.3, 0.5])
    full = experts_of(cands)
    with pytest.raises(RecipeError, match="2 weights given for 3 experts"):
        merge_into(model, full, [0.5, 0.5])
    with pytest.raises(RecipeError, match="negative"):
        merge_into(model, full, [1.5, -0.5, 0.0])
