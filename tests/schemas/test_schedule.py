"""The schedule specs in core: the API and the CLI check schedules with the same models."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

import api.schemas
from soce.schemas.schedule import (
    SEARCH_FIELDS,
    CandidateSource,
    PromotionPolicy,
    RecipeTemplate,
    ScheduleCreate,
    ScheduleUpdate,
)


def _create(**over: Any) -> dict[str, Any]:
    body = {
        "name": "nightly",
        "cron": "0 2 * * *",
        "timezone": "Europe/Paris",
        "recipe_template": {"suite_id": 1},
        "candidate_source": {"tag": "nightly"},
    }
    return {**body, **over}


def _locs(error: pytest.ExceptionInfo[ValidationError]) -> list[tuple]:
    return [e["loc"] for e in error.value.errors()]


def test_the_api_reexports_the_core_specs() -> None:
    assert api.schemas.ScheduleCreate is ScheduleCreate
    assert api.schemas.ScheduleUpdate is ScheduleUpdate
    assert api.schemas.CandidateSource is CandidateSource
    assert api.schemas.PromotionPolicy is PromotionPolicy


def test_recipe_template_has_the_fields_of_a_job_but_its_candidates() -> None:
    assert issubclass(api.schemas.JobCreate, RecipeTemplate)  # one list of search settings
    job_fields = set(api.schemas.JobCreate.model_fields) - {"candidate_ids", "tag"}
    assert set(RecipeTemplate.model_fields) == job_fields == {"suite_id", *SEARCH_FIELDS}


@pytest.mark.parametrize(
    "recipe",
    [
        {"suite_id": 3},
        {"suite_id": "3", "sampler": "grid", "n_trials": 5},
        {"suite_id": 3, "sampler": "nsga2", "space": "layerwise", "layer_groups": 3, "dtype": "bfloat16"},
        {"suite_id": 3, "tau": 0.2, "absolute": True, "include_best_single": False, "seed": 7},
    ],
)
def test_recipe_template_completes_a_recipe_as_a_job_would(recipe: dict[str, Any]) -> None:
    job = api.schemas.JobCreate.model_validate({**recipe, "tag": "-"})
    expected = {"suite_id": job.suite_id, **job.search_settings()}
    assert RecipeTemplate.checked(recipe) == expected
    assert list(RecipeTemplate.checked(recipe)) == ["suite_id", *SEARCH_FIELDS]


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({}, "suite_id: Field required"),
        (
            {"suite_id": 1, "sampler": "nope"},
            "sampler: Input should be 'grid', 'tpe', 'cmaes', 'nsga2' or 'learned'",
        ),
        ({"suite_id": 1, "tau": 2}, "tau: Input should be less than or equal to 1"),
        ({"suite_id": 1, "candidates": ["/a", "/b"]}, "candidates: Extra inputs are not permitted"),
        ({"suite_id": 1, "output": "/tmp/x"}, "output: Extra inputs are not permitted"),
        ({"suite_id": 1, "sampler": "grid", "space": "layerwise"}, "recipe: Value error, sampler grid"),
        ({"suite_id": 1, "sampler": "nsga2", "pruning": True}, "recipe: Value error, pruning needs one"),
    ],
)
def test_recipe_template_names_the_field_at_fault(recipe: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        RecipeTemplate.checked(recipe)


def test_schedule_create_checks_and_normalises() -> None:
    spec = ScheduleCreate.model_validate(_create(cron=" 0  2 * *  * "))
    assert spec.cron == "0 2 * * *"
    assert spec.recipe_template["suite_id"] == 1 and spec.recipe_template["sampler"] == "tpe"
    assert spec.promotion_policy == PromotionPolicy() and spec.enabled
    with pytest.raises(ValidationError) as bad_cron:
        ScheduleCreate.model_validate(_create(cron="0 25 * * *"))
    assert _locs(bad_cron) == [("cron",)] and "hour" in str(bad_cron.value)
    with pytest.raises(ValidationError) as bad_zone:
        ScheduleCreate.model_validate(_create(timezone="Mars/Base"))
    assert _locs(bad_zone) == [("timezone",)] and "Mars/Base" in str(bad_zone.value)
    with pytest.raises(ValidationError) as both:
        ScheduleCreate.model_validate(_create(candidate_source={"tag": "x", "glob": "/data/*"}))
    assert _locs(both) == [("candidate_source",)]
    with pytest.raises(ValidationError) as relative:
        ScheduleCreate.model_validate(_create(candidate_source={"glob": "data/*"}))
    assert "give an absolute path" in str(relative.value)
    with pytest.raises(ValidationError) as recipe:
        ScheduleCreate.model_validate(_create(recipe_template={"suite_id": 1, "sampler": "nope"}))
    assert _locs(recipe) == [("recipe_template",)]


def test_schedule_update_needs_a_field_and_allows_null_only_for_the_webhook() -> None:
    with pytest.raises(ValidationError, match="give at least one field to change"):
        ScheduleUpdate.model_validate({})
    with pytest.raises(ValidationError, match="cron: null is only allowed for webhook_url"):
        ScheduleUpdate.model_validate({"cron": None})
    cleared = ScheduleUpdate.model_validate({"webhook_url": None})
    assert cleared.model_fields_set == {"webhook_url"} and cleared.webhook_url is None
    changed = ScheduleUpdate.model_validate({"recipe_template": {"suite_id": 2}, "timezone": "UTC"})
    assert changed.recipe_template is not None and changed.recipe_template["sampler"] == "tpe"
    with pytest.raises(ValidationError) as extra:
        ScheduleUpdate.model_validate({"name": "renamed"})
    assert _locs(extra) == [("name",)]
