"""Parity with mergekit: our soups' mergekit_config.yml, replayed by mergekit-yaml, gives the same tensors.

Each mergekit-yaml run costs several seconds (imports), so there are only a handful.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from soce.merging import load_recipe, write_soup
from soce.schemas.merge import MergeRecipe

MERGEKIT_YAML = Path(sys.executable).parent / "mergekit-yaml"
pytestmark = pytest.mark.skipif(not MERGEKIT_YAML.exists(), reason="mergekit-yaml is not installed")
WEIGHTS = (0.5, 0.3, 0.2)


def mergekit(config: Path, out: Path, cwd: Path | None = None) -> Path:
    proc = subprocess.run(
        [str(MERGEKIT_YAML), str(config), str(out)], capture_output=True, text=True, cwd=cwd, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    assert out, f"no weights in {folder}"
    return out


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
    return max(float((a[n].double() - b[n].double()).abs().max()) for n in a)


def weighted(paths) -> list[dict]:
    return [{"path": str(p), "weight": w} for p, w in zip(paths, WEIGHTS, strict=True)]


def replay_matches(recipe: MergeRecipe, tmp_path: Path, tol: float) -> float:
    soup = write_soup(recipe, tmp_path / "soup")
    theirs = mergekit(soup.path / "mergekit_config.yml", tmp_path / "mergekit")
    diff = max_abs_diff(tensors(soup.path), tensors(theirs))
    print(f"{recipe.method} vs mergekit: max abs diff {diff}")
    assert diff <= tol
    return diff


def test_linear_float32(make_checkpoints, tmp_path: Path) -> None:
    cands = make_checkpoints(3, spread=1.0)
    replay_matches(MergeRecipe(method="linear", candidates=weighted(cands)), tmp_path, 1e-6)


def test_task_arithmetic_float32(make_checkpoints, tmp_path: Path) -> None:
    *cands, base = make_checkpoints(3, with_base=True, spread=1.0)
    recipe = MergeRecipe(
        method="task_arithmetic", candidates=weighted(cands), base=str(base), parameters={"lambda": 0.7}
    )
    replay_matches(recipe, tmp_path, 1e-6)


def test_ties_float32(make_checkpoints, tmp_path: Path) -> None:
    *cands, base = make_checkpoints(3, with_base=True, spread=1.0)
    recipe = MergeRecipe(
        method="ties", candidates=weighted(cands), base=str(base), parameters={"density": 0.5}
    )
    replay_matches(recipe, tmp_path, 1e-6)


def test_layerwise_float32(make_checkpoints, tmp_path: Path) -> None:
    cands = make_checkpoints(3, spread=1.0, layers=4)
    params = {
        "groups": 2,
        "embed": [1, 1, 2],
        "blocks": [[3, 2, 1], [1, 2, 3]],
        "head": [0, 1, 0],
        "patterns": [{"pattern": r"layers\.3\.mlp\.(up|gate)", "weights": [1, 0, 3]}],
    }
    recipe = MergeRecipe(method="layerwise", candidates=weighted(cands), parameters=params)
    replay_matches(recipe, tmp_path, 1e-6)
    # the per-tensor filters really differ from the default weights
    ours = tensors(tmp_path / "soup")
    first = tensors(Path(cands[1]))
    assert torch.equal(ours["lm_head.weight"], first["lm_head.weight"])
    up = "model.layers.3.mlp.up_proj.weight"
    assert not torch.equal(ours[up], first[up])


def bf16_ulp(x: np.ndarray) -> np.ndarray:
    """The spacing of bfloat16 numbers (8 significant bits) at magnitude |x|."""
    mag = np.maximum(np.abs(x), np.finfo(np.float32).tiny)
    return 2.0 ** (np.floor(np.log2(mag)) - 7)


def test_linear_bfloat16_within_one_ulp(make_checkpoints, tmp_path: Path) -> None:
    # Both tools sum in float32 and round once to bfloat16, but mergekit accumulates with addcmul and
    # then divides by the weight sum while we multiply by normalised weights: the float32 sums can
    # differ in the last bit, which flips the rounding of values that lie (almost) halfway between
    # two bfloat16 numbers. So: at most 1 bfloat16 ulp apart, except float32-level noise (<= 1e-8)
    # where terms cancel to nearly zero, and only a small fraction of entries differ at all.
    cands = make_checkpoints(3, dtype="bfloat16", spread=1.0)
    soup = write_soup(MergeRecipe(method="linear", candidates=weighted(cands)), tmp_path / "soup")
    theirs = tensors(mergekit(soup.path / "mergekit_config.yml", tmp_path / "mergekit"))
    ours = tensors(soup.path)
    worst = max_abs_diff(ours, theirs)
    differing = total = 0
    for name in ours:
        a, b = ours[name].double().numpy(), theirs[name].double().numpy()
        d = np.abs(a - b)
        allowed = np.maximum(bf16_ulp(np.maximum(np.abs(a), np.abs(b))), 1e-8)
        assert (d <= allowed).all(), f"{name}: {d.max()} apart"
        differing += int((d > 0).sum())
        total += d.size
    print(f"bfloat16 linear vs mergekit: max abs diff {worst}, {differing}/{total} entries differ")
    assert worst <= 2**-8  # one ulp at the largest magnitudes here (norm weights near 1)
    assert differing / total < 0.02


def test_handwritten_mergekit_yaml_fed_to_soce(make_checkpoints, tmp_path: Path) -> None:
    cands = make_checkpoints(3, spread=1.0)
    # "./": mergekit takes a bare relative path it cannot see as local for a hub id
    rel = [f"./{Path(c).relative_to(tmp_path)}" for c in cands]
    config = tmp_path / "merge.yml"
    config.write_text(
        "models:\n"
        f"  - model: {rel[0]}\n    parameters:\n      weight: 3\n"
        f"  - model: {rel[1]}\n    parameters:\n      weight: 2\n"
        f"  - model: {rel[2]}\n    parameters:\n      weight: 1\n"
        "merge_method: linear\n"
        "dtype: float32\n"
    )
    recipe = load_recipe(config)
    assert recipe.method == "linear" and recipe.dtype == "float32"
    assert [c.path for c in recipe.candidates] == [str(c) for c in cands]  # relative to the file
    soup = write_soup(recipe, tmp_path / "soup")
    theirs = mergekit(config, tmp_path / "mergekit", cwd=tmp_path)  # mergekit resolves against cwd
    diff = max_abs_diff(tensors(soup.path), tensors(theirs))
    print(f"hand-written mergekit linear: max abs diff {diff}")
    assert diff <= 1e-6
    # and the weights were normalised: 3:2:1 is not 1:1:1 and not unnormalised
    ours = tensors(soup.path)["model.norm.weight"].double()
    inputs = [tensors(Path(c))["model.norm.weight"].double() for c in cands]
    torch.testing.assert_close(ours, (3 * inputs[0] + 2 * inputs[1] + inputs[2]) / 6, rtol=1e-6, atol=1e-6)
