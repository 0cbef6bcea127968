"""Request and response bodies: input models (`...Create`) apart from output models (`...Public`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)

from soce.db.models import JOB_STATES, Candidate, Job, Schedule, ScheduleRun, Soup, Suite
from soce.schemas.report import Decision, Report
from soce.schemas.run import MAX_CANDIDATES, MAX_NAME_LENGTH, MAX_ROW_ID, PathStr, RowId
from soce.schemas.schedule import CandidateSource as CandidateSource
from soce.schemas.schedule import PromotionPolicy as PromotionPolicy
from soce.schemas.schedule import RecipeTemplate, Tag
from soce.schemas.schedule import ScheduleCreate as ScheduleCreate
from soce.schemas.schedule import ScheduleUpdate as ScheduleUpdate
from soce.schemas.suite import SuiteSpec

JobStateName = Literal[JOB_STATES]  # type: ignore[valid-type]


def _in_utc(value: datetime) -> datetime:
    """A time without a zone is UTC (what the databases hold); one with a zone is given in UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Every point in time a response shows: with its zone, in UTC ("2025-01-31T12:00:00Z"), as the
# document's `format: date-time` (RFC 3339) requires.
Timestamp = Annotated[datetime, AfterValidator(_in_utc)]


def _strings(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, text) of every string in a JSON value, keys included."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            inner = f"{where}.{key}" if where else str(key)
            if isinstance(key, str):
                yield inner, key
            yield from _strings(item, inner)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, f"{where}.{i}" if where else str(i))


# --- candidates ------------------------------------------------------------------------------
class CandidateCreate(BaseModel):
    """Checkpoint folders on the server to register; each is opened and checked before it is stored."""

    model_config = ConfigDict(extra="forbid")

    paths: list[PathStr] = Field(
        min_length=1, max_length=MAX_CANDIDATES, description="model folders on the server"
    )
    tags: list[Tag] = Field(default_factory=list, description="tags given to every folder registered")


class CandidatePublic(BaseModel):
    id: int
    name: str
    path: str
    content_hash: str | None = Field(description="null until a cpu worker has hashed the checkpoint")
    hashing: bool = Field(description="true until content_hash (or error) is set")
    architecture: dict[str, Any] | None
    size_bytes: int | None
    error: str | None
    tags: list[str]
    created_at: Timestamp | None

    @classmethod
    def of(cls, row: Candidate) -> CandidatePublic:
        return cls(
            id=row.id,
            name=row.name,
            path=row.path,
            content_hash=row.content_hash,
            hashing=row.content_hash is None and row.error is None,
            architecture=row.architecture,
            size_bytes=row.size_bytes,
            error=row.error,
            tags=list(row.tags),
            created_at=row.created_at,
        )


# --- suites ----------------------------------------------------------------------------------
class SuiteCreate(BaseModel):
    """A suite given inline (`spec`) or as the path of a suite YAML on the server (`path`)."""

    model_config = ConfigDict(extra="forbid")

    spec: SuiteSpec | None = None
    path: PathStr | None = Field(None, description="a suite YAML readable by the server")

    @field_validator("spec", mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        for where, text in _strings(value):
            if "\x00" in text:
                raise ValueError(
                    f"{where or 'spec'}: holds a NUL character (\\x00), which no stored text may hold"
                )
        return value

    @field_validator("spec")
    @classmethod
    def _storable(cls, spec: SuiteSpec | None) -> SuiteSpec | None:
        """What the suite's row and the score cache's integer columns can hold."""
        if spec is None:
            return spec
        if len(spec.name) > MAX_NAME_LENGTH:
            raise ValueError(f"name: at most {MAX_NAME_LENGTH} characters, got {len(spec.name)}")
        for field in ("seed", "limit", "num_fewshot"):
            value = getattr(spec, field)
            if value is not None and not -MAX_ROW_ID - 1 <= value <= MAX_ROW_ID:
                raise ValueError(f"{field}: {value} is out of range (-2**31 to 2**31 - 1)")
        for c, category in enumerate(spec.categories):
            weights = [(f"categories.{c}.weight", category.weight)]
            weights += [
                (f"categories.{c}.tasks.{t}.weight", task.weight) for t, task in enumerate(category.tasks)
            ]
            for where, weight in weights:
                if not math.isfinite(weight):
                    raise ValueError(f"{where}: give a finite number, got {weight}")
        return spec

    @model_validator(mode="after")
    def _one_source(self) -> SuiteCreate:
        if (self.spec is None) == (self.path is None):
            raise ValueError("give exactly one of 'spec' (the suite itself) or 'path' (a suite YAML)")
        return self


class SuitePublic(BaseModel):
    id: int
    name: str
    content_hash: str
    spec: dict[str, Any]
    created_at: Timestamp | None

    @classmethod
    def of(cls, row: Suite) -> SuitePublic:
        return cls(
            id=row.id, name=row.name, content_hash=row.content_hash, spec=row.spec, created_at=row.created_at
        )


# --- jobs ------------------------------------------------------------------------------------
class JobCreate(RecipeTemplate):
    """A SoCE run over registered candidates (by id or by tag) and a stored suite, with search settings
    (RecipeTemplate's: RunRecipe's own fields, defaults, bounds and cross-field rules)."""

    candidate_ids: list[RowId] | None = Field(
        None, min_length=2, max_length=MAX_CANDIDATES, description="registered candidate ids"
    )
    tag: Tag | None = Field(None, description="every candidate carrying this tag, instead of candidate_ids")

    @model_validator(mode="after")
    def _one_source(self) -> JobCreate:
        if (self.candidate_ids is None) == (self.tag is None):
            raise ValueError("give exactly one of 'candidate_ids' or 'tag'")
        if self.candidate_ids is not None and len(set(self.candidate_ids)) != len(self.candidate_ids):
            raise ValueError("candidate_ids lists a candidate more than once")
        return self


class JobPublic(BaseModel):
    id: int
    name: str
    state: str
    suite_id: int
    candidate_ids: list[int]
    progress: dict[str, Any]
    error: str | None
    created_at: Timestamp | None
    updated_at: Timestamp | None
    started_at: Timestamp | None
    finished_at: Timestamp | None

    @classmethod
    def fields_of(cls, row: Job) -> dict[str, Any]:
        return {
            "id": row.id,
            "name": row.name,
            "state": row.state,
            "suite_id": row.suite_id,
            "candidate_ids": [c.id for c in row.candidates],
            "progress": dict(row.progress or {}),
            "error": row.error,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
            "started_at": row.started_at,
            "finished_at": row.finished_at,
        }

    @classmethod
    def of(cls, row: Job) -> JobPublic:
        return cls(**cls.fields_of(row))


class JobPage(BaseModel):
    items: list[JobPublic]
    total: int
    limit: int
    offset: int


class CandidateBrief(BaseModel):
    id: int
    name: str
    path: str
    content_hash: str | None


class SuiteBrief(BaseModel):
    id: int
    name: str


class SoupBrief(BaseModel):
    id: int
    path: str
    content_hash: str | None
    weights: dict[str, Any]
    scores: dict[str, Any]


class TrialPublic(BaseModel):
    number: int
    state: str
    values: list[float | None] | None
    params: dict[str, Any]
    user_attrs: dict[str, Any]
    datetime_start: Timestamp | None
    datetime_complete: Timestamp | None
    duration_seconds: float | None


class JobDetail(JobPublic):
    verdict: str | None = Field(
        None,
        description="the outcome in one line: use the soup (its gain over the best single candidate on "
        "test), or keep the named candidate; null until the job is done",
    )
    decision: Decision | None = Field(
        None, description="the final model: a soup or the best single candidate; null until the job is done"
    )
    report: Report | None = Field(
        None,
        description="everything the run produced, as its report.json holds it (JSON Schema: "
        "/v1/schemas/report); null until the job is done",
    )
    recipe: dict[str, Any]
    suite: SuiteBrief
    candidates: list[CandidateBrief]
    timings: dict[str, Any]
    study_name: str | None
    analysis: dict[str, Any] | None = Field(description="everything the analysis step recorded")
    score_matrix: Any = Field(None, description="dev scores, candidates x categories (from analysis)")
    correlations: Any = Field(None, description="correlations between categories (from analysis)")
    experts: Any = Field(None, description="the category experts chosen (from analysis)")
    best_trial: TrialPublic | None = Field(None, description="the best trial of a one-objective search")
    soup: SoupBrief | None = None

    @model_serializer(mode="wrap")
    def _verdict_first(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        return {"verdict": data.pop("verdict", None), **data}


# --- trials, soups, health -------------------------------------------------------------------
class TrialPage(BaseModel):
    study_name: str | None
    directions: list[str]
    items: list[TrialPublic]
    total: int
    limit: int
    offset: int


class SoupPublic(SoupBrief):
    job_id: int | None
    lineage: dict[str, Any]
    created_at: Timestamp | None
    card: str | None = Field(description="the soup folder's README.md (model card); null if unreadable")
    recipe: str | None = Field(description="the soup folder's soce_recipe.yml; null if unreadable")

    @classmethod
    def of(cls, row: Soup, *, card: str | None, recipe: str | None) -> SoupPublic:
        return cls(
            id=row.id,
            job_id=row.job_id,
            path=row.path,
            content_hash=row.content_hash,
            weights=dict(row.weights or {}),
            scores=dict(row.scores or {}),
            lineage=dict(row.lineage or {}),
            created_at=row.created_at,
            card=card,
            recipe=recipe,
        )


class ComponentHealth(BaseModel):
    ok: bool
    detail: str


class WorkersHealth(ComponentHealth):
    names: list[str] = Field(default_factory=list)


class Health(BaseModel):
    status: Literal["ok", "degraded", "down"]
    database: ComponentHealth
    redis: ComponentHealth
    workers: WorkersHealth
    stalled_jobs: int | None = Field(
        None,
        description="active jobs with no progress and no worker heartbeat for job_stall_seconds (the "
        "sweep sends their task again); null when the database is unreachable",
    )


# --- schedules -------------------------------------------------------------------------------
# The input specs are core's (the CLI checks schedules with them too); re-exported here.


class ScheduleRunPublic(BaseModel):
    id: int
    due_at: Timestamp
    outcome: str
    job_id: int | None
    details: dict[str, Any]
    error: str | None
    created_at: Timestamp | None
    finished_at: Timestamp | None

    @classmethod
    def of(cls, row: ScheduleRun) -> ScheduleRunPublic:
        return cls.model_validate(row, from_attributes=True)


class SchedulePublic(BaseModel):
    id: int
    name: str
    cron: str
    timezone: str
    recipe_template: dict[str, Any]
    candidate_source: dict[str, Any]
    promotion_policy: dict[str, Any]
    webhook_url: str | None
    enabled: bool
    champion_soup_id: int | None
    last_run_at: Timestamp | None
    next_run_at: Timestamp | None
    created_at: Timestamp | None

    @classmethod
    def of(cls, row: Schedule) -> SchedulePublic:
        return cls.model_validate(row, from_attributes=True)


class ScheduleDetail(SchedulePublic):
    champion: SoupBrief | None
    runs: list[ScheduleRunPublic] = Field(description="newest first")
