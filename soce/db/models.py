"""Tables of the app database (ours only; Optuna keeps its own database).

The same models serve PostgreSQL (the service) and SQLite (embedded mode). JSON columns are JSONB on
PostgreSQL (so rows can be compared, grouped and made DISTINCT) and JSON elsewhere; a dict column
tracks changes to its top-level keys, nested changes need the value assigned again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    func,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.associationproxy import AssociationProxy, association_proxy
from sqlalchemy.ext.mutable import MutableDict
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from soce.flow import FINISHED_STATES, JOB_STATES, JobState

# Named constraints so migrations can drop and alter them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JOB_FINISHED_STATES = FINISHED_STATES
SCHEDULE_RUN_OUTCOMES = ("running", "promoted", "not_better", "skipped", "failed")

# None is SQL NULL (not JSON null), so `column IS NULL` finds every unset value
JSONType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
JSONDict = MutableDict.as_mutable(JSONType)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp, stored and returned in UTC on every backend.

    SQLite keeps no time zone: without this, it would hand back naive datetimes that cannot be
    compared with aware ones (a scheduler's `next_run_at <= now`).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"timestamp {value.isoformat()} has no time zone; use an aware datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _created() -> Mapped[datetime]:
    return mapped_column(UTCDateTime, server_default=func.now())


def _updated() -> Mapped[datetime]:
    return mapped_column(UTCDateTime, server_default=func.now(), onupdate=func.now())


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Score(Base):
    """One task's score for one checkpoint content, cached under `key` (a hash of the other key fields)."""

    __tablename__ = "scores"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    checkpoint_hash: Mapped[str] = mapped_column(String(64), index=True)
    task_spec_hash: Mapped[str] = mapped_column(String(64))
    evaluator: Mapped[str] = mapped_column(String(64))
    evaluator_version: Mapped[str] = mapped_column(String(64))
    limit: Mapped[int | None]
    num_fewshot: Mapped[int]
    seed: Mapped[int]
    task: Mapped[str] = mapped_column(String(255))
    split: Mapped[str] = mapped_column(String(64))
    metric: Mapped[str] = mapped_column(String(255))
    value: Mapped[float]
    stderr: Mapped[float | None]
    n: Mapped[int | None]
    # per-document values in document order, where the caller asked for them (a soup's test scores)
    samples: Mapped[list[float] | None] = mapped_column(
        # a type of its own: MutableDict.as_mutable(JSONType) makes every JSONType column take dicts only
        JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    def __repr__(self) -> str:
        return f"Score({self.task} {self.metric}={self.value:.4g} ckpt={self.checkpoint_hash[:12]})"


class CandidateTag(Base):
    """One tag of one candidate; a table of its own so that filtering by tag uses an index."""

    __tablename__ = "candidate_tags"

    candidate_id: Mapped[int] = mapped_column(
        ForeignKey("candidates.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(255), primary_key=True, index=True)


class Candidate(Base):
    """A registered checkpoint folder; `content_hash` is None until a cpu worker (or the job scoring it)
    has hashed it."""

    __tablename__ = "candidates"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(Text, index=True)
    content_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    architecture: Mapped[dict[str, Any] | None] = mapped_column(JSONDict)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)  # why hashing or checking failed
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    tag_rows: Mapped[list[CandidateTag]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by=CandidateTag.tag, lazy="selectin"
    )
    tags: AssociationProxy[list[str]] = association_proxy(
        "tag_rows", "tag", creator=lambda tag: CandidateTag(tag=tag)
    )

    def __repr__(self) -> str:
        return f"Candidate({self.id} {self.name} {(self.content_hash or 'unhashed')[:12]})"


class Suite(Base):
    """A benchmark suite spec, stored once per content."""

    __tablename__ = "suites"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONDict)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = _created()

    def __repr__(self) -> str:
        return f"Suite({self.id} {self.name} {self.content_hash[:12]})"


job_candidates = Table(
    "job_candidates",
    Base.metadata,
    Column("job_id", ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("candidate_id", ForeignKey("candidates.id"), primary_key=True, index=True),
)


class Job(Base):
    """One SoCE run through the state machine queued -> scoring -> analysing -> searching -> finalizing."""

    __tablename__ = "jobs"
    __table_args__ = (CheckConstraint(_one_of("state", JOB_STATES), name="state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    suite_id: Mapped[int] = mapped_column(ForeignKey("suites.id"), index=True)
    recipe: Mapped[dict[str, Any]] = mapped_column(JSONDict)
    state: Mapped[str] = mapped_column(
        String(16), index=True, default=JobState.QUEUED, server_default=JobState.QUEUED.value
    )
    progress: Mapped[dict[str, Any]] = mapped_column(JSONDict, default=dict)  # per stage: done, total
    analysis: Mapped[dict[str, Any] | None] = mapped_column(JSONDict)  # correlations, experts
    study_name: Mapped[str | None] = mapped_column(String(255))  # in Optuna's own database
    error: Mapped[str | None] = mapped_column(Text)
    timings: Mapped[dict[str, Any]] = mapped_column(JSONDict, default=dict)  # seconds per stage
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now(), index=True)
    updated_at: Mapped[datetime] = _updated()
    # set every few seconds by a worker running one of the job's tasks: a job whose heartbeat and row
    # are both stale, with no message waiting in the broker, has lost its task (workers.sweep)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    suite: Mapped[Suite] = relationship(lazy="joined")
    candidates: Mapped[list[Candidate]] = relationship(
        secondary=job_candidates, order_by=Candidate.id, lazy="selectin"
    )
    soups: Mapped[list[Soup]] = relationship(back_populates="job", order_by="Soup.id")

    @property
    def finished(self) -> bool:
        return self.state in JOB_FINISHED_STATES

    def __repr__(self) -> str:
        return f"Job({self.id} {self.name} {self.state})"


class Soup(Base):
    """A soup folder written by a job: its weights, its scores and the ingredients it came from."""

    __tablename__ = "soups"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    path: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    weights: Mapped[dict[str, Any]] = mapped_column(JSONDict)
    scores: Mapped[dict[str, Any]] = mapped_column(JSONDict, default=dict)
    lineage: Mapped[dict[str, Any]] = mapped_column(JSONDict, default=dict)  # ingredients, hashes, method
    created_at: Mapped[datetime] = _created()

    job: Mapped[Job | None] = relationship(back_populates="soups")

    def __repr__(self) -> str:
        return f"Soup({self.id} job={self.job_id} {self.path})"


class ApiKey(Base):
    """An API key: only its SHA-256 is stored, with a short prefix to recognise it by."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    read_only: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = _created()
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def __repr__(self) -> str:
        return f"ApiKey({self.name} {self.prefix}…{' revoked' if self.revoked else ''})"


class AppSecret(Base):
    """A secret every API process must share (the dashboard's session key): the first process to need it
    stores a random value, and every process reads back the stored one."""

    __tablename__ = "app_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()

    def __repr__(self) -> str:
        return f"AppSecret({self.name})"  # never the value


class Schedule(Base):
    """A recurring SoCE run (the nightly soup) and its current champion."""

    __tablename__ = "schedules"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    cron: Mapped[str] = mapped_column(String(255))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    recipe_template: Mapped[dict[str, Any]] = mapped_column(JSONDict)
    candidate_source: Mapped[dict[str, Any]] = mapped_column(JSONDict)  # a glob, or a tag
    promotion_policy: Mapped[dict[str, Any]] = mapped_column(JSONDict)  # metric, minimum improvement
    webhook_url: Mapped[str | None] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    champion_soup_id: Mapped[int | None] = mapped_column(ForeignKey("soups.id", ondelete="SET NULL"))
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()

    champion: Mapped[Soup | None] = relationship()
    runs: Mapped[list[ScheduleRun]] = relationship(
        back_populates="schedule", order_by="ScheduleRun.due_at", passive_deletes=True
    )

    def __repr__(self) -> str:
        return f"Schedule({self.name} {self.cron!r} {self.timezone}{'' if self.enabled else ' disabled'})"


class ScheduleRun(Base):
    """One due time of a schedule; unique per (schedule, due time), so two beats never start it twice."""

    __tablename__ = "schedule_runs"
    __table_args__ = (
        UniqueConstraint("schedule_id", "due_at"),
        CheckConstraint(_one_of("outcome", SCHEDULE_RUN_OUTCOMES), name="outcome"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    schedule_id: Mapped[int] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(16), default="running", server_default="running")
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSONDict, default=dict)  # gate numbers, new candidates
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    schedule: Mapped[Schedule] = relationship(back_populates="runs")
    job: Mapped[Job | None] = relationship()

    def __repr__(self) -> str:
        return f"ScheduleRun({self.schedule_id} {self.due_at.isoformat()} {self.outcome})"
