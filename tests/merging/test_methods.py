"""Every merge method against results worked out by hand on tiny hand-made checkpoints."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from soce.checkpoints import save_file
from soce.config import get_settings
from soce.errors import RecipeError
from soce.merging import write_soup
from soce.schemas.merge import MergeRecipe


def write_tiny(folder: Path, tensors: dict[str, np.ndarray | list]) -> str:
    """A model folder holding only model.safetensors (float32); no config, no tokenizer."""
    folder.mkdir(parents=True)
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    save_file(arrays, folder / "model.safetensors")
    return str(folder)


def merged(recipe: MergeRecipe, out: Path) -> dict[str, np.ndarray]:
    write_soup(recipe, out)
    return load_file(out / "model.safetensors")


def weighted(paths: list[str], weights: list[float]) -> list[dict]:
    return [{"path": p, "weight": w} for p, w in zip(paths, weights, strict=True)]


# --- linear and uniform ------------------------------------------------------------------

A = {"w": [[1.0, 2.0, -3.0], [4.0, 0.5, 8.0]], "b": [1.0, -1.0, 2.0, 6.0]}
B = {"w": [[-4.0, 8.0, 1.0], [0.0, 2.0, -6.0]], "b": [3.0, 5.0, -2.0, 0.0]}
C = {"w": [[2.0, -2.0, 7.0], [1.0, 1.0, 1.0]], "b": [0.0, 4.0, 4.0, -8.0]}
D = {"w": [[6.0, 0.0, 0.0], [-1.0, 3.0, 2.0]], "b": [2.0, 2.0, -6.0, 1.0]}


@pytest.fixture
def abcd(tmp_path: Path) -> list[str]:
    return [write_tiny(tmp_path / name, t) for name, t in zip("abcd", (A, B, C, D), strict=True)]


def expect(coeffs: list[float], sources: list[dict]) -> dict[str, np.ndarray]:
    return {
        k: sum(np.float64(c) * np.asarray(s[k], np.float64) for c, s in zip(coeffs, sources, strict=True))
        for k in sources[0]
    }


def assert_tensors(got: dict[str, np.ndarray], want: dict[str, np.ndarray], **tol) -> None:
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == np.float32
        if tol:
            np.testing.assert_allclose(got[k], want[k], err_msg=k, **tol)
        else:
            np.testing.assert_array_equal(got[k], want[k].astype(np.float32), err_msg=k)


def test_linear_normalises_weights(abcd: list[str], tmp_path: Path) -> None:
    # 2:1:1 -> 0.5, 0.25, 0.25 (dyadic, so float32 is exact)
    got = merged(MergeRecipe(method="linear", candidates=weighted(abcd[:3], [2, 1, 1])), tmp_path / "soup")
    assert_tensors(got, expect([0.5, 0.25, 0.25], [A, B, C]))
    assert got["w"][0, 0] == pytest.approx(0.5 * 1 + 0.25 * -4 + 0.25 * 2)


def test_linear_without_normalising(abcd: list[str], tmp_path: Path) -> None:
    recipe = MergeRecipe(
        method="linear", candidates=weighted(abcd[:3], [0.5, 0.25, 2.0]), parameters={"normalize": False}
    )
    got = merged(recipe, tmp_path / "soup")
    assert_tensors(got, expect([0.5, 0.25, 2.0], [A, B, C]))


def test_linear_negative_weights_need_opt_in(abcd: list[str], tmp_path: Path) -> None:
    cands = weighted(abcd[:2], [1.5, -0.5])
    with pytest.raises(RecipeError, match="negative"):
        write_soup(MergeRecipe(method="linear", candidates=cands), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    recipe = MergeRecipe(
        method="linear", candidates=cands, parameters={"normalize": False, "allow_negative_weights": True}
    )
    assert_tensors(merged(recipe, tmp_path / "soup"), expect([1.5, -0.5], [A, B]))


@pytest.mark.parametrize(
    ("weights", "message"),
    [([0, 0, 0], "zero"), ([1, float("nan"), 1], "finite"), ([1, None, 1], "missing")],
)
def test_linear_bad_weights_are_refused(abcd: list[str], tmp_path: Path, weights: list, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        write_soup(MergeRecipe(method="linear", candidates=weighted(abcd[:3], weights)), tmp_path / "soup")
    assert not (tmp_path / "soup").exists()


def test_uniform_is_the_plain_mean(abcd: list[str], tmp_path: Path) -> None:
    got = merged(MergeRecipe(method="uniform", candidates=abcd), tmp_path / "soup4")
    assert_tensors(got, expect([0.25] * 4, [A, B, C, D]))  # 1/4 is exact
    got3 = merged(MergeRecipe(method="uniform", candidates=abcd[:3]), tmp_path / "soup3")
    assert_tensors(got3, expect([1 / 3] * 3, [A, B, C]), rtol=1e-6, atol=1e-6)


def test_uniform_refuses_weights(abcd: list[str], tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="uniform takes no weights"):
        write_soup(MergeRecipe(method="uniform", candidates=weighted(abcd[:2], [1, 1])), tmp_path / "soup")


def test_a_soup_needs_two_candidates(abcd: list[str], tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="at least 2 candidates"):
        write_soup(MergeRecipe(method="uniform", candidates=abcd[:1]), tmp_path / "soup")


# --- layerwise -------------------------------------------------------------------------------

LAYER_NAMES = [
    "model.embed_tokens.weight",
    *[f"model.layers.{i}.{part}.weight" for i in range(4) for part in ("self_attn.q_proj", "mlp.up_proj")],
    "model.norm.weight",
    "lm_head.weight",
    "model.extra_scale",  # in no group: the candidates' own weights
]


def test_layerwise_groups_and_patterns(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    sources = [
        {name: rng.integers(-8, 9, size=(3, 2)).astype(np.float32) for name in LAYER_NAMES} for _ in range(2)
    ]
    paths = [write_tiny(tmp_path / f"c{k}", s) for k, s in enumerate(sources)]
    params = {
        "groups": 2,
        "embed": [3, 1],
        "blocks": [[1, 1], [1, 3]],
        "norm": [0, 1],
        "head": [1, 0],
        "patterns": [
            {"pattern": r"layers\.3\.mlp", "weights": [1, 7]},
            {"pattern": r"mlp", "weights": [5, 3]},  # also matches layer 3, but the first match wins
        ],
    }
    recipe = MergeRecipe(method="layerwise", candidates=weighted(paths, [3, 5]), parameters=params)
    got = merged(recipe, tmp_path / "soup")

    # worked out by hand: 4 blocks in 2 buckets -> blocks 0, 1 in bucket 0; blocks 2, 3 in bucket 1
    by_hand = {
        "model.embed_tokens.weight": [0.75, 0.25],
        "model.layers.0.self_attn.q_proj.weight": [0.5, 0.5],
        "model.layers.1.self_attn.q_proj.weight": [0.5, 0.5],
        "model.layers.2.self_attn.q_proj.weight": [0.25, 0.75],
        "model.layers.3.self_attn.q_proj.weight": [0.25, 0.75],
        "model.layers.0.mlp.up_proj.weight": [0.625, 0.375],
        "model.layers.1.mlp.up_proj.weight": [0.625, 0.375],
        "model.layers.2.mlp.up_proj.weight": [0.625, 0.375],
        "model.layers.3.mlp.up_proj.weight": [0.125, 0.875],
        "model.norm.weight": [0.0, 1.0],
        "lm_head.weight": [1.0, 0.0],
        "model.extra_scale": [0.375, 0.625],
    }
    assert set(by_hand) == set(LAYER_NAMES) == set(got)
    for name, (c0, c1) in by_hand.items():
        want = c0 * sources[0][name].astype(np.float64) + c1 * sources[1][name].astype(np.float64)
        np.testing.assert_array_equal(got[name], want.astype(np.float32), err_msg=name)


def test_layerwise_without_weights_averages_uniformly(tmp_path: Path) -> None:
    paths = [write_tiny(tmp_path / n, t) for n, t in (("a", A), ("b", B))]
    recipe = MergeRecipe(method="layerwise", candidates=paths, parameters={"norm": [1, 3]})
    got = merged(recipe, tmp_path / "soup")
    assert_tensors(got, expect([0.5, 0.5], [A, B]))  # no tensor is in the norm group


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"groups": 2, "blocks": [[1, 1]]}, "blocks has 1 lists for groups: 2"),
        ({"embed": [1, 1, 1]}, "embed has 3 weights for 2 candidates"),
        ({"patterns": [{"pattern": "(", "weights": [1, 1]}]}, "regular expression"),
        ({"head": [0, 0]}, "zero"),
    ],
)
def test_layerwise_bad_parameters(abcd: list[str], tmp_path: Path, params: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        write_soup(MergeRecipe(method="layerwise", candidates=abcd[:2], parameters=params), tmp_path / "soup")


# --- task arithmetic, TIES, DARE ---------------------------------------------------------------

BASE = {"w": [1.0, 1.0, 1.0, 1.0]}
# task vectors (candidate - base), chosen so trimming and sign election are easy to follow
DELTAS = [[3.0, -1.0, 0.5, -2.0], [-1.0, 2.0, -0.25, -4.0], [2.0, -3.0, 1.0, 0.125]]


@pytest.fixture
def with_base(tmp_path: Path) -> tuple[list[str], str]:
    base = write_tiny(tmp_path / "base", BASE)
    cands = [write_tiny(tmp_path / f"t{k}", {"w": np.add(BASE["w"], d)}) for k, d in enumerate(DELTAS)]
    return cands, base


def task_recipe(method: str, setup: tuple[list[str], str], weights: list | None, **params) -> MergeRecipe:
    cands, base = setup
    candidates = cands if weights is None else weighted(cands, weights)
    return MergeRecipe(method=method, candidates=candidates, base=base, parameters=params)


def test_task_arithmetic(with_base: tuple[list[str], str], tmp_path: Path) -> None:
    base, d = np.array(BASE["w"]), np.array(DELTAS)
    got = merged(task_recipe("task_arithmetic", with_base, [0.5, 0.25, 1.0]), tmp_path / "plain")["w"]
    np.testing.assert_array_equal(got, base + 0.5 * d[0] + 0.25 * d[1] + 1.0 * d[2])

    got = merged(task_recipe("task_arithmetic", with_base, None), tmp_path / "ones")["w"]
    np.testing.assert_array_equal(got, base + d.sum(axis=0))  # weights default to 1

    got = merged(
        task_recipe("task_arithmetic", with_base, [0.5, 0.25, 1.0], **{"lambda": 0.5, "normalize": True}),
        tmp_path / "lam",
    )["w"]
    want = base + 0.5 * (0.5 * d[0] + 0.25 * d[1] + 1.0 * d[2]) / 1.75
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_task_arithmetic_needs_a_base(abcd: list[str], tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="needs a base model"):
        write_soup(MergeRecipe(method="task_arithmetic", candidates=abcd[:2]), tmp_path / "soup")
    with pytest.raises(RecipeError, match="does not use a base"):
        write_soup(
            MergeRecipe(method="linear", candidates=weighted(abcd[:2], [1, 1]), base=abcd[2]),
            tmp_path / "soup",
        )


def test_ties_trims_elects_signs_and_takes_disjoint_mean(
    with_base: tuple[list[str], str], tmp_path: Path
) -> None:
    # density 0.5 keeps the 2 largest of 4 entries per task vector:
    #   [3, 0, 0, -2], [0, 2, 0, -4], [2, -3, 0, 0]
    # weighted by 1, 2, 1: [3, 0, 0, -2], [0, 4, 0, -8], [2, -3, 0, 0]
    # sums [5, 1, 0, -10] elect signs [+, +, +, -]; agreeing entries and their weights:
    #   entry 0: 3 + 2 over 1 + 1; entry 1: 4 over 2 (the -3 disagrees);
    #   entry 2: nothing (divisor 1); entry 3: -2 - 8 over 1 + 2
    got = merged(task_recipe("ties", with_base, [1, 2, 1], density=0.5), tmp_path / "norm")["w"]
    np.testing.assert_allclose(got, [1 + 2.5, 1 + 2, 1 + 0, 1 - 10 / 3], rtol=1e-6)

    recipe = task_recipe("ties", with_base, [1, 2, 1], density=0.5, normalize=False)
    got = merged(recipe, tmp_path / "sum")["w"]
    np.testing.assert_array_equal(got, [1 + 5, 1 + 4, 1 + 0, 1 - 10])

    got = merged(task_recipe("ties", with_base, [1, 2, 1], density=0.5, **{"lambda": 0.5}), tmp_path / "lam")[
        "w"
    ]
    np.testing.assert_allclose(got, [1 + 1.25, 1 + 1, 1, 1 - 5 / 3], rtol=1e-6)


def test_ties_without_trimming(with_base: tuple[list[str], str], tmp_path: Path) -> None:
    # weighted deltas [3, -1, .5, -2], [-2, 4, -.5, -8], [2, -3, 1, .125]; sums [3, 0, 1, -9.875]:
    # a zero sum elects +, so entry 1 keeps only the 4 (weight 2)
    got = merged(task_recipe("ties", with_base, [1, 2, 1]), tmp_path / "soup")["w"]
    np.testing.assert_allclose(got, [1 + 2.5, 1 + 2, 1 + 0.75, 1 - 10 / 3], rtol=1e-6)


def test_ties_per_candidate_density(with_base: tuple[list[str], str], tmp_path: Path) -> None:
    cands, base = with_base
    candidates = [
        {"path": cands[0], "weight": 1, "density": 0.25},  # keeps only the 3
        {"path": cands[1], "weight": 1, "density": 1.0},
        {"path": cands[2], "weight": 1, "density": 0.5},  # keeps 2 and -3
    ]
    recipe = MergeRecipe(method="ties", candidates=candidates, base=base, parameters={"normalize": False})
    got = merged(recipe, tmp_path / "soup")["w"]
    # deltas [3, 0, 0, 0], [-1, 2, -.25, -4], [2, -3, 0, 0]; sums [4, -1, -.25, -4] -> [+, -, -, -]
    np.testing.assert_array_equal(got, [1 + 5, 1 - 3, 1 - 0.25, 1 - 4])


def test_dare_at_density_one_is_task_arithmetic(make_checkpoints, tmp_path: Path) -> None:
    *cands, base = make_checkpoints(3, with_base=True)
    cw = weighted([str(c) for c in cands], [0.5, 0.3, 0.2])
    ta = merged(
        MergeRecipe(method="task_arithmetic", candidates=cw, base=str(base), parameters={"lambda": 0.7}),
        tmp_path / "ta",
    )
    dare = merged(
        MergeRecipe(
            method="dare",
            candidates=cw,
            base=str(base),
            parameters={"lambda": 0.7, "density": 1.0, "seed": 5},
        ),
        tmp_path / "dare",
    )
    assert set(ta) == set(dare)
    for k in ta:
        np.testing.assert_array_equal(dare[k], ta[k], err_msg=k)
    # and with sign consensus it is TIES without trimming
    ties = merged(MergeRecipe(method="ties", candidates=cw, base=str(base)), tmp_path / "ties")
    dare_ties = merged(
        MergeRecipe(
            method="dare",
            candidates=cw,
            base=str(base),
            parameters={"sign_consensus": True, "normalize": True},
        ),
        tmp_path / "dt",
    )
    for k in ties:
        np.testing.assert_array_equal(dare_ties[k], ties[k], err_msg=k)


@pytest.fixture
def ones_over_zeros(tmp_path: Path) -> tuple[list[str], str]:
    """Base all zeros, candidates all ones (and all threes): merged values show the drop masks directly."""
    shape = (50, 40)
    base = write_tiny(tmp_path / "zeros", {"x": np.zeros(shape), "y": np.zeros((30,))})
    c1 = write_tiny(tmp_path / "ones", {"x": np.ones(shape), "y": np.ones((30,))})
    c3 = write_tiny(tmp_path / "threes", {"x": np.full(shape, 3.0), "y": np.full((30,), 3.0)})
    return [c1, c3], base


def dare(setup: tuple[list[str], str], out: Path, n: int = 1, **params) -> dict[str, np.ndarray]:
    cands, base = setup
    return merged(MergeRecipe(method="dare", candidates=cands[:n], base=base, parameters=params), out)


def test_dare_drops_and_rescales(ones_over_zeros: tuple[list[str], str], tmp_path: Path) -> None:
    x = dare(ones_over_zeros, tmp_path / "s1", density=0.5, seed=1)["x"]
    assert set(np.unique(x)) == {0.0, 2.0}  # kept entries are 1 / 0.5
    assert 0.4 < np.mean(x != 0) < 0.6  # about half of 2000 kept
    x3 = dare(ones_over_zeros, tmp_path / "s3", density=0.25, seed=1)["x"]
    assert set(np.unique(x3)) == {0.0, 4.0}
    assert 0.18 < np.mean(x3 != 0) < 0.32
    plain = dare(ones_over_zeros, tmp_path / "norescale", density=0.5, seed=1, rescale=False)["x"]
    np.testing.assert_array_equal(plain, x / 2)  # the same mask, entries not rescaled


def test_dare_is_deterministic_per_seed(ones_over_zeros: tuple[list[str], str], tmp_path: Path) -> None:
    a = dare(ones_over_zeros, tmp_path / "a", density=0.5, seed=1)
    dare(ones_over_zeros, tmp_path / "b", density=0.5, seed=1)
    c = dare(ones_over_zeros, tmp_path / "c", density=0.5, seed=2)
    weights = "model.safetensors"
    assert (tmp_path / "a" / weights).read_bytes() == (tmp_path / "b" / weights).read_bytes()
    assert not np.array_equal(a["x"], c["x"])
    assert not np.array_equal(a["y"], c["y"])
    # masks depend on the tensor name too: x's first 30 entries are not y's mask
    assert not np.array_equal(a["x"].reshape(-1)[:30], a["y"])


def test_dare_masks_differ_per_candidate(ones_over_zeros: tuple[list[str], str], tmp_path: Path) -> None:
    # candidates 1 and 3 over a zero base, density 0.5: each entry is 0, 2 (only the first kept),
    # 6 (only the second) or 8 (both): independent masks give all four
    x = dare(ones_over_zeros, tmp_path / "soup", n=2, density=0.5, seed=4)["x"]
    values, counts = np.unique(x, return_counts=True)
    assert set(values) == {0.0, 2.0, 6.0, 8.0}
    assert all(c > 300 for c in counts)  # about 500 each out of 2000


def test_dare_masks_do_not_depend_on_chunking(
    ones_over_zeros: tuple[list[str], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = dare(ones_over_zeros, tmp_path / "whole", n=2, density=0.5, seed=9)
    monkeypatch.setenv("SOCE_MERGE_CHUNK_ELEMENTS", "1024")  # x has 2000 elements
    monkeypatch.setenv("SOCE_MERGE_THREADS", "1")
    get_settings.cache_clear()
    try:
        chunked = dare(ones_over_zeros, tmp_path / "chunked", n=2, density=0.5, seed=9)
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    for k in whole:
        np.testing.assert_array_equal(chunked[k], whole[k], err_msg=k)


def test_dare_mask_is_a_function_of_seed_name_and_index(
    ones_over_zeros: tuple[list[str], str], tmp_path: Path
) -> None:
    # the documented contract: numpy's generator seeded with (seed, crc32(tensor name), candidate index)
    got = dare(ones_over_zeros, tmp_path / "soup", n=2, density=0.5, seed=11, rescale=False)
    for name, arr in got.items():
        masks = [
            np.random.default_rng([11, zlib.crc32(name.encode()), i]).random(arr.size, dtype=np.float32) < 0.5
            for i in range(2)
        ]
        want = (masks[0] * 1.0 + masks[1] * 3.0).reshape(arr.shape)
        np.testing.assert_array_equal(arr, want, err_msg=name)


def test_elementwise_methods_do_not_depend_on_chunking(
    make_checkpoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cands = [str(c) for c in make_checkpoints(3)]
    params = {"groups": 2, "blocks": [[1, 2, 3], [3, 2, 1]]}
    recipe = MergeRecipe(method="layerwise", candidates=weighted(cands, [0.2, 0.3, 0.5]), parameters=params)
    write_soup(recipe, tmp_path / "whole")
    monkeypatch.setenv("SOCE_MERGE_CHUNK_ELEMENTS", "1024")  # the embedding has over 3000 elements
    monkeypatch.setenv("SOCE_MERGE_THREADS", "3")
    get_settings.cache_clear()
    try:
        write_soup(recipe, tmp_path / "chunked")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert (tmp_path / "whole" / "model.safetensors").read_bytes() == (
        tmp_path / "chunked" / "model.safetensors"
    ).read_bytes()


def _int_and_float_candidates(tmp_path: Path, n_float: int, n_int: int) -> list[str]:
    paths = []
    for k in range(2):
        folder = tmp_path / f"c{k}"
        folder.mkdir()
        tensors = {
            "w": np.full((n_float,), float(k), np.float32),
            "ids": np.arange(n_int, dtype=np.int64) + 10 * k,
        }
        save_file(tensors, folder / "model.safetensors")
        paths.append(str(folder))
    return paths


def test_integer_tensors_are_copied_from_the_first_candidate(tmp_path: Path) -> None:
    paths = _int_and_float_candidates(tmp_path, n_float=8, n_int=5)
    got = merged(MergeRecipe(method="uniform", candidates=paths), tmp_path / "soup")
    np.testing.assert_array_equal(got["w"], np.full((8,), 0.5, np.float32))
    assert got["ids"].dtype == np.int64
    np.testing.assert_array_equal(got["ids"], np.arange(5))


def test_float_tensors_stay_float_when_integer_tensors_are_larger(tmp_path: Path) -> None:
    paths = _int_and_float_candidates(tmp_path, n_float=4, n_int=5)
    got = merged(MergeRecipe(method="uniform", candidates=paths), tmp_path / "soup")
    assert got["w"].dtype == np.float32
    np.testing.assert_array_equal(got["w"], np.full((4,), 0.5, np.float32))
