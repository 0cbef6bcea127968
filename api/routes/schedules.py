"""Schedules: recurring SoCE runs (a cron expression in a time zone) with a promotion gate and a champion."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.auth import Writer
from api.deps import SessionDep
from api.errors import invalid, not_found
from api.schemas import (
    ScheduleCreate,
    ScheduleDetail,
    SchedulePublic,
    ScheduleRunPublic,
    ScheduleUpdate,
    SoupBrief,
)
from soce.db.models import Schedule, ScheduleRun, Suite
from soce.schedules import next_fire

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])
RUNS_SHOWN = 50


def schedule_row(body: ScheduleCreate, now: datetime) -> Schedule:
    """The row of a checked schedule; its first run is the cron's next fire time after `now`."""
    return Schedule(
        name=body.name,
        cron=body.cron,
        timezone=body.timezone,
        recipe_template=body.recipe_template,
        candidate_source=body.candidate_source.model_dump(exclude_none=True),
        promotion_policy=body.promotion_policy.model_dump(),
        webhook_url=body.webhook_url,
        enabled=body.enabled,
        next_run_at=next_fire(body.cron, body.timezone, now),
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SchedulePublic)
def create_schedule(body: ScheduleCreate, session: SessionDep, _key: Writer) -> SchedulePublic:
    """Store a schedule; its first run is the cron's next fire time after now."""
    suite_id = body.recipe_template["suite_id"]
    if session.get(Suite, suite_id) is None:
        raise invalid(
            ["body", "recipe_template", "suite_id"], f"suite {suite_id} does not exist", "not_found"
        )
    row = schedule_row(body, datetime.now(UTC))
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, f"a schedule named {body.name!r} exists") from None
    return SchedulePublic.of(row)


@router.get("", response_model=list[SchedulePublic])
def list_schedules(session: SessionDep) -> list[SchedulePublic]:
    """Every schedule, by name."""
    return [SchedulePublic.of(r) for r in session.scalars(select(Schedule).order_by(Schedule.name))]


def _detail(session: SessionDep, row: Schedule) -> ScheduleDetail:
    runs = session.scalars(
        select(ScheduleRun)
        .where(ScheduleRun.schedule_id == row.id)
        .order_by(ScheduleRun.due_at.desc())
        .limit(RUNS_SHOWN)
    )
    champion = row.champion
    return ScheduleDetail(
        **SchedulePublic.of(row).model_dump(),
        champion=SoupBrief.model_validate(champion, from_attributes=True) if champion else None,
        runs=[ScheduleRunPublic.of(r) for r in runs],
    )


def _get(session: SessionDep, schedule_id: int) -> Schedule:
    row = session.get(Schedule, schedule_id)
    if row is None:
        raise not_found(f"schedule {schedule_id}")
    return row


@router.get("/{schedule_id}", response_model=ScheduleDetail)
def get_schedule(schedule_id: int, session: SessionDep) -> ScheduleDetail:
    """A schedule with its champion soup and its latest runs."""
    return _detail(session, _get(session, schedule_id))


def apply_update(row: Schedule, body: ScheduleUpdate, now: datetime) -> None:
    """Set the given fields (the recipe's suite must exist: the caller checks); the next run is planned
    again from `now` when the cron, the time zone or `enabled` (to true) changes."""
    given = body.model_fields_set
    if "recipe_template" in given:
        row.recipe_template = body.recipe_template
    if "candidate_source" in given:
        row.candidate_source = body.candidate_source.model_dump(exclude_none=True)
    if "promotion_policy" in given:
        row.promotion_policy = body.promotion_policy.model_dump()
    if "webhook_url" in given:
        row.webhook_url = body.webhook_url
    replan = bool({"cron", "timezone"} & given) or (body.enabled is True and not row.enabled)
    row.cron = body.cron or row.cron
    row.timezone = body.timezone or row.timezone
    if "enabled" in given:
        row.enabled = body.enabled
    if replan:
        row.next_run_at = next_fire(row.cron, row.timezone, now)


@router.patch("/{schedule_id}", response_model=ScheduleDetail)
def update_schedule(
    schedule_id: int, body: ScheduleUpdate, session: SessionDep, _key: Writer
) -> ScheduleDetail:
    """Change a schedule's fields; the next run is planned again from now when the cron, the time zone
    or `enabled` (to true) changes. Runs already started keep the settings they started with."""
    row = _get(session, schedule_id)
    if body.recipe_template is not None:
        suite_id = body.recipe_template["suite_id"]
        if session.get(Suite, suite_id) is None:
            raise invalid(
                ["body", "recipe_template", "suite_id"], f"suite {suite_id} does not exist", "not_found"
            )
    apply_update(row, body, datetime.now(UTC))
    session.commit()
    return _detail(session, row)
