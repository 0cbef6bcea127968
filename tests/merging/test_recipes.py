"""Recipe parsing: our YAML, mergekit's YAML, and errors that name what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from soce.errors import RecipeError, UnknownMergeMethodError
from soce.merging import METHODS, from_mergekit, load_recipe, method_class, parse_recipe, write_soup
from soce.schemas.merge import MergeRecipe


def write_yaml(path: Path, data: dict | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


# --- mergekit configs --------------------------------------------------------------------------


def test_mergekit_dare_ties_maps_to_dare_with_sign_consensus() -> None:
    recipe = from_mergekit(
        {
            "merge_method": "dare_ties",
            "base_model": "/m/base",
            "models": [
                {"model": "/m/base"},  # mergekit lets the base appear among the models
                {"model": "/m/a", "parameters": {"weight": 0.7, "density": 0.4}},
                {"model": "/m/b", "parameters": {"weight": 0.3}},
            ],
            "parameters": {"density": 0.6, "normalize": True, "int8_mask": True},
            "dtype": "bfloat16",
        }
    )
    assert recipe.method == "dare"
    assert recipe.base == "/m/base"
    got = [(c.path, c.weight, c.density) for c in recipe.candidates]
    assert got == [("/m/a", 0.7, 0.4), ("/m/b", 0.3, 0.6)]
    assert recipe.parameters == {"normalize": True, "sign_consensus": True}
    assert recipe.dtype == "bfloat16"


@pytest.mark.parametrize(
    ("mk_method", "method", "implied"),
    [
        ("linear", "linear", {}),
        ("task_arithmetic", "task_arithmetic", {}),
        ("ties", "ties", {}),
        ("dare_linear", "dare", {}),
        ("dare_ties", "dare", {"sign_consensus": True}),
    ],
)
def test_mergekit_method_names(mk_method: str, method: str, implied: dict) -> None:
    data = {"merge_method": mk_method, "models": [{"model": "/m/a", "parameters": {"weight": 1}}, "/m/b"]}
    if method != "linear":
        data["base_model"] = "/m/base"
    recipe = from_mergekit(data)
    assert recipe.method == method and recipe.parameters == implied
    assert [c.path for c in recipe.candidates] == ["/m/a", "/m/b"]
    assert [c.weight for c in recipe.candidates] == [1.0, None]


def test_mergekit_out_dtype_wins_over_dtype() -> None:
    recipe = from_mergekit(
        {"merge_method": "linear", "models": ["/a", "/b"], "dtype": "float32", "out_dtype": "bf16"}
    )
    assert recipe.dtype == "bfloat16"


def test_unsupported_mergekit_method_is_named() -> None:
    with pytest.raises(UnknownMergeMethodError, match="'slerp'") as err:
        from_mergekit({"merge_method": "slerp", "models": ["/a", "/b"], "parameters": {"t": 0.5}})
    assert "dare_ties" in str(err.value)  # and the supported ones are listed


def test_mergekit_gradients_are_refused_with_the_field_path(tmp_path: Path) -> None:
    config = write_yaml(
        tmp_path / "grad.yml",
        {
            "merge_method": "linear",
            "models": [
                {"model": "a", "parameters": {"weight": 0.5}},
                {"model": "b", "parameters": {"weight": [0.1, 0.5, 0.9]}},
            ],
        },
    )
    with pytest.raises(RecipeError, match=r"models\[1\]\.parameters\.weight is \[0\.1, 0\.5, 0\.9\]") as err:
        load_recipe(config)
    assert str(config) in str(err.value) and "layerwise" in str(err.value)
    with pytest.raises(RecipeError, match=r"parameters\.lambda"):
        from_mergekit(
            {
                "merge_method": "task_arithmetic",
                "base_model": "/base",
                "models": ["/a"],
                "parameters": {"lambda": [0.5, 1.0]},
            }
        )
    with pytest.raises(RecipeError, match=r"models\[0\]\.parameters\.density"):
        from_mergekit(
            {
                "merge_method": "ties",
                "base_model": "/base",
                "models": [{"model": "/a", "parameters": {"density": [{"filter": "mlp", "value": 0.5}]}}],
            }
        )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"merge_method": "linear", "slices": [], "models": ["/a"]}, "'slices'"),
        ({"merge_method": "linear", "models": []}, "'models' must be a non-empty list"),
        ({"merge_method": "linear", "models": [{"parameters": {}}]}, r"models\[0\] needs a 'model'"),
        ({"merge_method": "linear", "base_model": "/b", "models": ["/a", "/c"]}, "base_model is ignored"),
        ({"merge_method": "linear", "models": [{"model": "/a", "parameters": {"epsilon": 1}}]}, "epsilon"),
        ({"merge_method": "linear", "models": ["/a"], "dtype": "int4"}, "dtype"),
    ],
)
def test_bad_mergekit_configs(data: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        from_mergekit(data)


# --- our recipes -----------------------------------------------------------------------------


def test_unknown_method_lists_the_available_ones(make_checkpoints, tmp_path: Path) -> None:
    cands = [str(c) for c in make_checkpoints(2)]
    recipe = load_recipe(write_yaml(tmp_path / "r.yml", {"method": "soup_magic", "candidates": cands}))
    with pytest.raises(UnknownMergeMethodError, match="'soup_magic'") as err:
        write_soup(recipe, tmp_path / "soup")
    for name in METHODS:
        assert name in str(err.value)
    assert not (tmp_path / "soup").exists()
    with pytest.raises(UnknownMergeMethodError, match="available: " + ", ".join(sorted(METHODS))):
        method_class("soup_magic")


@pytest.mark.parametrize(
    ("method", "params", "bad"),
    [
        ("ties", {"densty": 0.5}, "densty"),
        ("linear", {"lambda": 2}, "lambda"),
        ("uniform", {"normalize": False}, "normalize"),
        ("dare", {"density": 0}, "density"),
    ],
)
def test_unknown_or_bad_parameter_is_named(make_checkpoints, tmp_path: Path, method, params, bad) -> None:
    *cands, base = make_checkpoints(2, with_base=True)
    recipe = MergeRecipe(
        method=method,
        candidates=[str(c) for c in cands],
        base=str(base) if METHODS[method].needs_base else None,
        parameters=params,
    )
    with pytest.raises(RecipeError, match=rf"{method} parameters\.{bad}"):
        write_soup(recipe, tmp_path / "soup")
    assert not (tmp_path / "soup").exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"candidates": []}, "candidates"),
        ({"candidates": ["/a", "/a"]}, "listed twice"),
        ({"candidates": [{"path": "/a", "density": 1.5}]}, r"candidates\.0\.density"),
        ({"candidates": ["/a"], "dtype": "int8"}, "dtype"),
        ({"candidates": ["/a"], "shard_size": "lots"}, "shard_size"),
        ({"candidates": ["/a"], "weights": [1]}, "weights"),
    ],
)
def test_bad_recipes_name_the_field(data: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        parse_recipe(data)


def test_recipe_defaults_and_sizes() -> None:
    recipe = parse_recipe({"candidates": ["/a", {"path": "/b", "weight": 2}], "shard_size": "2MiB"})
    assert recipe.method == "linear"  # the default
    assert [(c.path, c.weight) for c in recipe.candidates] == [("/a", None), ("/b", 2.0)]
    assert recipe.shard_size == 2 * 2**20
    assert parse_recipe({"candidates": ["/a"], "shard_size": "5GB"}).shard_size == 5 * 10**9
    assert parse_recipe({"candidates": ["/a"]}).shard_size == 5 * 10**9


def test_models_is_accepted_as_another_word_for_candidates(tmp_path: Path) -> None:
    recipe = load_recipe(write_yaml(tmp_path / "r.yml", {"method": "uniform", "models": ["a", "b"]}))
    assert [c.path for c in recipe.candidates] == [str(tmp_path / "a"), str(tmp_path / "b")]


@pytest.mark.parametrize(
    ("text", "message"),
    [("- just\n- a list\n", "a recipe is a YAML mapping"), ("method: [unclosed\n", "not valid YAML")],
)
def test_unreadable_recipe_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        load_recipe(write_yaml(tmp_path / "r.yml", text))
    with pytest.raises(RecipeError, match="no such recipe file"):
        load_recipe(tmp_path / "missing.yml")


def test_relative_paths_resolve_against_the_recipe_file(
    make_checkpoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    *cands, base = make_checkpoints(2, with_base=True)
    recipe_dir = tmp_path / "recipes" / "nested"
    rel = [Path("..", "..", Path(c).relative_to(tmp_path)) for c in (*cands, base)]
    path = write_yaml(
        recipe_dir / "ta.yml",
        {
            "method": "task_arithmetic",
            "candidates": [{"path": str(rel[0]), "weight": 0.5}, str(rel[1])],
            "base": str(rel[2]),
            "parameters": {"lambda": 0.5},
        },
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the recipe's folder
    recipe = load_recipe(path)
    assert [Path(c.path).resolve() for c in recipe.candidates] == [Path(c).resolve() for c in cands]
    assert Path(recipe.base).resolve() == Path(base).resolve()
    soup = write_soup(recipe, "soup")  # relative output: against the working directory
    assert soup.path == elsewhere / "soup"
    written = yaml.safe_load((soup.path / "soce_recipe.yml").read_text())
    assert written["candidates"][0]["path"] == str(Path(cands[0]).resolve())  # absolute in the soup
    assert written["base"] == str(Path(base).resolve())
    # an absolute path stays as it is
    absolute = load_recipe(write_yaml(tmp_path / "abs.yml", {"candidates": [str(cands[0]), str(cands[1])]}))
    assert [c.path for c in absolute.candidates] == [str(cands[0]), str(cands[1])]
