"""Schedules as given by a client: recurring SoCE runs, checked the same way by the API and the CLI."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from soce.errors import SoceError
from soce.schedules import next_fire, time_zone
from soce.schemas.run import MAX_NAME_LENGTH, PathStr, RowId, RunRecipe, StoredStr

Tag = Annotated[StoredStr, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME_LENGTH)]
# The columns a schedule's cron expression and time zone are stored in: String(255) and String(64)
Cron = Annotated[StoredStr, StringConstraints(max_length=255)]
TimeZone = Annotated[StoredStr, StringConstraints(max_length=64)]
WebhookUrl = Annotated[StoredStr, StringConstraints(pattern=r"^https?://", max_length=2000)]
# The RunRecipe fields a job takes from its request: candidates and suite come by id, output is the
# workers' business.
SEARCH_FIELDS = tuple(n for n in RunRecipe.model_fields if n not in ("candidates", "suite", "output"))


class CandidateSource(BaseModel):
    """Where a scheduled run finds its candidates: checkpoint folders matching a glob, or a tag."""

    model_config = ConfigDict(extra="forbid")

    glob: PathStr | None = Field(None, description="absolute glob of checkpoint folders, registered when new")
    tag: Tag | None = Field(None, description="registered candidates carrying this tag")

    @model_validator(mode="after")
    def _one(self) -> CandidateSource:
        if (self.glob is None) == (self.tag is None):
            raise ValueError("give exactly one of 'glob' or 'tag'")
        if self.glob is not None and not self.glob.startswith("/"):
            raise ValueError(f"glob {self.glob!r}: give an absolute path on the server")
        return self


class PromotionPolicy(BaseModel):
    """Promote a soup only if the lower bound of (soup - champion) on `metric` exceeds min_improvement."""

    model_config = ConfigDict(extra="forbid")

    metric: Literal["test_average"] = "test_average"
    min_improvement: float = Field(0.0, ge=-1.0, le=1.0)


class RecipeTemplate(BaseModel):
    """A stored suite's id and a job's search settings (RunRecipe's fields but candidates, suite and
    output), with RunRecipe's defaults, bounds and cross-field rules: what each scheduled run submits."""

    model_config = ConfigDict(extra="forbid")

    suite_id: RowId = Field(description="a stored suite's id")
    name: str = RunRecipe.model_fields["name"]
    evaluator: Literal["lm_eval"] = RunRecipe.model_fields["evaluator"]
    batch_size: int | None = RunRecipe.model_fields["batch_size"]
    correlation: Literal["pearson", "spearman"] = RunRecipe.model_fields["correlation"]
    tau: float = RunRecipe.model_fields["tau"]
    absolute: bool = RunRecipe.model_fields["absolute"]
    max_experts: int | None = RunRecipe.model_fields["max_experts"]
    sampler: Literal["grid", "tpe", "cmaes", "nsga2", "learned"] = RunRecipe.model_fields["sampler"]
    n_trials: int | None = RunRecipe.model_fields["n_trials"]
    learned_steps: int = RunRecipe.model_fields["learned_steps"]
    learned_lr: float = RunRecipe.model_fields["learned_lr"]
    parallel_trials: int = RunRecipe.model_fields["parallel_trials"]
    space: Literal["simplex", "layerwise"] = RunRecipe.model_fields["space"]
    layer_groups: int = RunRecipe.model_fields["layer_groups"]
    pruning: bool = RunRecipe.model_fields["pruning"]
    greedy_strict: bool = RunRecipe.model_fields["greedy_strict"]
    include_best_single: bool = RunRecipe.model_fields["include_best_single"]
    selection_fraction: float = RunRecipe.model_fields["selection_fraction"]
    selection_trials: int = RunRecipe.model_fields["selection_trials"]
    ensemble: bool = RunRecipe.model_fields["ensemble"]
    seed: int = RunRecipe.model_fields["seed"]
    bootstrap_iterations: int = RunRecipe.model_fields["bootstrap_iterations"]
    confidence: float = RunRecipe.model_fields["confidence"]
    interpolation_points: int = RunRecipe.model_fields["interpolation_points"]
    dtype: Literal["float32", "bfloat16", "float16"] | None = RunRecipe.model_fields["dtype"]

    @model_validator(mode="after")
    def _consistent(self) -> RecipeTemplate:
        try:  # RunRecipe's own cross-field rules (grid with layerwise, nsga2 with pruning)
            RunRecipe.model_validate({"candidates": ["-"], "suite": "-", **self.search_settings()})
        except ValidationError as e:
            raise ValueError(
                "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
            ) from None
        return self

    def search_settings(self) -> dict[str, Any]:
        """The recipe a job stores: RunRecipe's fields but candidates, suite and output."""
        return {n: getattr(self, n) for n in SEARCH_FIELDS}

    @classmethod
    def checked(cls, recipe: dict[str, Any]) -> dict[str, Any]:
        """`recipe` checked and completed with the defaults, as a schedule stores it; a ValueError
        names each field at fault."""
        try:
            template = cls.model_validate(recipe)
        except ValidationError as e:
            raise ValueError(
                "; ".join(f"{'.'.join(map(str, err['loc'])) or 'recipe'}: {err['msg']}" for err in e.errors())
            ) from None
        return {"suite_id": template.suite_id, **template.search_settings()}


def _checked_cron(v: str) -> str:
    try:
        next_fire(v, "UTC", datetime(2000, 1, 1, tzinfo=UTC))
    except SoceError as e:  # soce.schedules names the field of the expression at fault
        raise ValueError(str(e)) from None
    return " ".join(v.split())


def _checked_timezone(v: str) -> str:
    try:
        time_zone(v)
    except SoceError as e:
        raise ValueError(str(e)) from None
    return v


class ScheduleCreate(BaseModel):
    """A new schedule: a cron expression in a time zone, the recipe each run submits, where its
    candidates come from, and when a run's soup replaces the champion."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    cron: Cron = Field(description="five fields: minute hour day-of-month month day-of-week")
    timezone: TimeZone = Field("UTC", description="IANA time zone the cron expression is read in")
    recipe_template: dict[str, Any] = Field(description="suite_id and a job's search settings")
    candidate_source: CandidateSource
    promotion_policy: PromotionPolicy = Field(default_factory=PromotionPolicy)
    webhook_url: WebhookUrl | None = None
    enabled: bool = True

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        return _checked_cron(v)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        return _checked_timezone(v)

    @field_validator("recipe_template")
    @classmethod
    def _recipe(cls, v: dict[str, Any]) -> dict[str, Any]:
        return RecipeTemplate.checked(v)


class ScheduleUpdate(BaseModel):
    """The fields to change (the others stay); a new cron or time zone plans the next run from now."""

    model_config = ConfigDict(extra="forbid")

    cron: Cron | None = None
    timezone: TimeZone | None = None
    recipe_template: dict[str, Any] | None = None
    candidate_source: CandidateSource | None = None
    promotion_policy: PromotionPolicy | None = None
    webhook_url: WebhookUrl | None = Field(None, description="null: none")
    enabled: bool | None = None

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        return None if v is None else _checked_cron(v)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str | None) -> str | None:
        return None if v is None else _checked_timezone(v)

    @field_validator("recipe_template")
    @classmethod
    def _recipe(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if v is None else RecipeTemplate.checked(v)

    @model_validator(mode="after")
    def _something(self) -> ScheduleUpdate:
        if not self.model_fields_set:
            raise ValueError(f"give at least one field to change: {', '.join(type(self).model_fields)}")
        for name in self.model_fields_set - {"webhook_url"}:
            if getattr(self, name) is None:
                raise ValueError(f"{name}: null is only allowed for webhook_url")
        return self
