"""Schedules: recurring SoCE runs (a cron expression in a time zone) with a promotion gate and a champion."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.auth import Writer
from api.deps import SessionDep, SettingsDep
from api.errors import BODY_STATUSES, READ_STATUSES, WRITE_STATUSES, error_responses, invalid, not_found
from api.schemas import (
    ScheduleCreate,
    ScheduleDetail,
    SchedulePublic,
    ScheduleRunPublic,
    ScheduleUpdate,
    SoupBrief,
)
from soce.db import schedules as schedule_rows
from soce.db.models import Schedule, ScheduleRun
from soce.errors import ScheduleError
from soce.schemas.run import RowId

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])
RUNS_SHOWN = 50


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SchedulePublic,
    responses=error_responses(
        *WRITE_STATUSES, *BODY_STATUSES, 409, notes={409: "a schedule of this name exists"}
    ),
)
def create_schedule(
    body: ScheduleCreate, session: SessionDep, settings: SettingsDep, _key: Writer
) -> SchedulePublic:
    """Store a schedule; its first run is the cron's next fire time after now."""
    try:
        row = schedule_rows.create_schedule(
            session=session, spec=body, checkpoint_roots=settings.checkpoint_roots
        )
        session.commit()
    except ScheduleError as e:  # the recipe's suite is not stored, or the glob is outside the roots
        raise _refused(e) from None
    except IntegrityError:
        session.rollback()
        raise HTTPException(status.HTTP_409_CONFLICT, f"a schedule named {body.name!r} exists") from None
    return SchedulePublic.of(row)


@router.get("", response_model=list[SchedulePublic], responses=error_responses(*READ_STATUSES))
def list_schedules(session: SessionDep) -> list[SchedulePublic]:
    """Every schedule, by name."""
    return [SchedulePublic.of(r) for r in schedule_rows.list_schedules(session=session)]


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


@router.get(
    "/{schedule_id}",
    response_model=ScheduleDetail,
    responses=error_responses(*READ_STATUSES, 404, 422, notes={404: "no schedule has this id"}),
)
def get_schedule(schedule_id: RowId, session: SessionDep) -> ScheduleDetail:
    """A schedule with its champion soup and its latest runs."""
    return _detail(session, _get(session, schedule_id))


@router.patch(
    "/{schedule_id}",
    response_model=ScheduleDetail,
    responses=error_responses(*WRITE_STATUSES, *BODY_STATUSES, 404, notes={404: "no schedule has this id"}),
)
def update_schedule(
    schedule_id: RowId, body: ScheduleUpdate, session: SessionDep, settings: SettingsDep, _key: Writer
) -> ScheduleDetail:
    """Change a schedule's fields; the next run is planned again from now when the cron, the time zone
    or `enabled` (to true) changes. Runs already started keep the settings they started with."""
    row = _get(session, schedule_id)
    try:
        schedule_rows.update_schedule(
            session=session, schedule=row, spec=body, checkpoint_roots=settings.checkpoint_roots
        )
    except ScheduleError as e:  # the new recipe's suite is not stored, or its glob is outside the roots
        raise _refused(e) from None
    session.commit()
    return _detail(session, row)


def _refused(error: ScheduleError) -> Exception:
    """A 422 at the field the error names: the glob, or else the recipe's suite (not stored)."""
    if error.field is not None:
        return invalid(["body", *error.field], str(error), "value_error")
    return invalid(["body", "recipe_template", "suite_id"], str(error), "not_found")
