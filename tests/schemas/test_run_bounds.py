"""The recipe's bounds: what the workers (numpy, Optuna, the bootstrap) and the database columns can
honour, checked the same way for `soce run`, a job and a schedule's recipe."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from soce.errors import RunRecipeError
from soce.schemas.run import MAX_ROW_ID, RunRecipe
from soce.schemas.schedule import CandidateSource, RecipeTemplate, ScheduleCreate

BASE = {"candidates": ["/m/a", "/m/b"], "suite": "/s.yml"}

# (field, the largest or smallest value accepted, the next one past it)
EDGES = [
    ("seed", 0, -1),
    ("seed", 2**32 - 1, 2**32),
    ("bootstrap_iterations", 10_000, 10_001),
    ("n_trials", 10_000, 10_001),
    ("parallel_trials", 64, 65),
    ("selection_trials", 20, 21),
    ("layer_groups", 128, 129),
    ("interpolation_points", 0, -1),
    ("interpolation_points", 101, 102),
    ("max_experts", 1000, 1001),
    ("batch_size", 4096, 4097),
    ("name", "x" * 255, "x" * 256),
]


@pytest.mark.parametrize("field, inside, outside", EDGES)
def test_each_bound_is_inclusive_and_refuses_the_next_value(field: str, inside: Any, outside: Any) -> None:
    assert getattr(RunRecipe.model_validate({**BASE, field: inside}), field) == inside
    with pytest.raises(ValidationError) as caught:
        RunRecipe.model_validate({**BASE, field: outside})
    assert [e["loc"] for e in caught.value.errors()] == [(field,)]


@pytest.mark.parametrize(
    "field, value",
    [("seed", 2**33), ("bootstrap_iterations", 10**12), ("n_trials", 10**9), ("layer_groups", 10**9)],
)
def test_the_recipe_file_names_the_field_out_of_range(field: str, value: int) -> None:
    with pytest.raises(RunRecipeError, match=rf"recipe.yml: {field}: Input should be less than"):
        RunRecipe.parse({**BASE, field: value}, where="recipe.yml: ")


@pytest.mark.parametrize(
    "update",
    [{"name": "soup\x00"}, {"candidates": ["/m/a", "/m/\x00"]}, {"suite": "/s\x00.yml"}, {"output": "o\x00"}],
)
def test_nul_in_any_text_is_refused(update: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="NUL"):
        RunRecipe.model_validate({**BASE, **update})


def test_a_recipe_template_has_the_recipe_bounds_and_an_id_the_database_holds() -> None:
    for field, inside, outside in EDGES:
        assert getattr(RecipeTemplate.model_validate({"suite_id": 1, field: inside}), field) == inside
        with pytest.raises(ValidationError):
            RecipeTemplate.model_validate({"suite_id": 1, field: outside})
    assert RecipeTemplate.model_validate({"suite_id": MAX_ROW_ID}).suite_id == MAX_ROW_ID
    for suite_id in (0, MAX_ROW_ID + 1, 2**63):
        with pytest.raises(ValidationError, match="suite_id"):
            RecipeTemplate.model_validate({"suite_id": suite_id})
    with pytest.raises(ValueError, match="seed"):
        RecipeTemplate.checked({"suite_id": 1, "seed": -1})


def test_one_interpolation_point_is_no_curve() -> None:
    assert RunRecipe.model_validate({**BASE, "interpolation_points": 2}).interpolation_points == 2
    with pytest.raises(RunRecipeError, match="interpolation_points: one point is no curve"):
        RunRecipe.parse({**BASE, "interpolation_points": 1}, where="recipe.yml: ")
    with pytest.raises(ValueError, match="interpolation_points: one point is no curve"):
        RecipeTemplate.checked({"suite_id": 1, "interpolation_points": 1})


@pytest.mark.parametrize(
    "update, field",
    [
        ({"cron": "0 3 * * *" + " " * 300}, "cron"),
        ({"timezone": "Europe/" + "x" * 64}, "timezone"),
        ({"webhook_url": "https://hooks.example/\x00"}, "webhook_url"),
        ({"candidate_source": {"tag": "x" * 256}}, "candidate_source"),
    ],
)
def test_a_schedule_fits_its_columns(update: dict[str, Any], field: str) -> None:
    spec = {
        "name": "n",
        "cron": "0 3 * * *",
        "recipe_template": {"suite_id": 1},
        "candidate_source": {"tag": "t"},
    }
    ScheduleCreate.model_validate(spec)
    with pytest.raises(ValidationError) as caught:
        ScheduleCreate.model_validate({**spec, **update})
    assert {e["loc"][0] for e in caught.value.errors()} == {field}


def test_a_candidate_glob_is_a_path_without_nul() -> None:
    assert CandidateSource(glob="/srv/ckpt-*").glob == "/srv/ckpt-*"
    with pytest.raises(ValidationError, match="NUL"):
        CandidateSource(glob="/srv/\x00*")
    with pytest.raises(ValidationError, match="at most 4096"):
        CandidateSource(glob="/" + "x" * 4096)
