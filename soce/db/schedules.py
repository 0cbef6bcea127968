"""Schedule rows: created and changed from checked specs (the API and the CLI call these), listed, found.

The cron and time zone are already checked by the specs (`soce.schemas.schedule`); these functions
check what needs the database (the recipe's suite is stored) and plan the next run with
`soce.schedules.next_fire`. A glob of candidate folders must lie under the checkpoint roots
(SOCE_CHECKPOINT_ROOTS). Names are unique: the database refuses a second schedule of the same name
with an IntegrityError when the session flushes.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import takewhile
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from soce.config import get_settings, path_under_roots
from soce.db.models import Schedule, Suite
from soce.errors import ScheduleError
from soce.schedules import next_fire
from soce.schemas.schedule import ScheduleCreate, ScheduleUpdate


def create_schedule(
    *,
    session: Session,
    spec: ScheduleCreate,
    now: datetime | None = None,
    checkpoint_roots: Sequence[Path] | None = None,
) -> Schedule:
    """Store a schedule; its first run is the cron's next fire time after `now` (default: now).

    A ScheduleError says that the candidates' glob is not under `checkpoint_roots` (default: the
    settings'), or that the recipe's suite is not stored.
    """
    _check_glob(spec.candidate_source.glob, checkpoint_roots)
    _check_suite(session, spec.recipe_template)
    row = Schedule(
        name=spec.name,
        cron=spec.cron,
        timezone=spec.timezone,
        recipe_template=spec.recipe_template,
        candidate_source=spec.candidate_source.model_dump(exclude_none=True),
        promotion_policy=spec.promotion_policy.model_dump(),
        webhook_url=spec.webhook_url,
        enabled=spec.enabled,
        next_run_at=next_fire(spec.cron, spec.timezone, now or datetime.now(UTC)),
    )
    session.add(row)
    session.flush()
    return row


def update_schedule(
    *,
    session: Session,
    schedule: Schedule,
    spec: ScheduleUpdate,
    now: datetime | None = None,
    checkpoint_roots: Sequence[Path] | None = None,
) -> Schedule:
    """Set the fields given in `spec`; the next run is planned again from `now` (default: now) when the
    cron, the time zone or `enabled` (to true) changes. Runs already started keep their settings.

    A ScheduleError says that a new glob is not under `checkpoint_roots` (default: the settings') or
    that a new recipe's suite is not stored; then nothing changes.
    """
    given = spec.model_fields_set
    if "candidate_source" in given and spec.candidate_source is not None:
        _check_glob(spec.candidate_source.glob, checkpoint_roots)
    if "recipe_template" in given:
        _check_suite(session, spec.recipe_template)
        schedule.recipe_template = spec.recipe_template
    if "candidate_source" in given:
        schedule.candidate_source = spec.candidate_source.model_dump(exclude_none=True)
    if "promotion_policy" in given:
        schedule.promotion_policy = spec.promotion_policy.model_dump()
    if "webhook_url" in given:
        schedule.webhook_url = spec.webhook_url
    replan = bool({"cron", "timezone"} & given) or (spec.enabled is True and not schedule.enabled)
    schedule.cron = spec.cron or schedule.cron
    schedule.timezone = spec.timezone or schedule.timezone
    if "enabled" in given:
        schedule.enabled = spec.enabled
    if replan:
        schedule.next_run_at = next_fire(schedule.cron, schedule.timezone, now or datetime.now(UTC))
    return schedule


def list_schedules(*, session: Session) -> list[Schedule]:
    """Every schedule, by name."""
    return list(session.scalars(select(Schedule).order_by(Schedule.name)))


def get_schedule_by_name(*, session: Session, name: str) -> Schedule | None:
    """The schedule named `name`, or None."""
    return session.scalar(select(Schedule).where(Schedule.name == name))


def _check_suite(session: Session, recipe_template: dict[str, Any]) -> None:
    suite_id = recipe_template["suite_id"]
    if session.get(Suite, suite_id) is None:
        raise ScheduleError(f"suite {suite_id} does not exist")


GLOB_FIELD = ("candidate_source", "glob")


def _check_glob(pattern: str | None, roots: Sequence[Path] | None) -> None:
    """A glob of candidate folders must start, before its first wildcard, in a folder under the roots,
    and hold no '..' (which a wildcard match could climb out of the roots with)."""
    if pattern is None:
        return
    roots = get_settings().checkpoint_roots if roots is None else roots
    where = f"candidate_source.glob {pattern!r}"
    if not roots:
        raise ScheduleError(
            field=GLOB_FIELD,
            message=f"{where}: schedules register folders only under SOCE_CHECKPOINT_ROOTS, which is not set "
            "(absolute paths separated by ':', or a JSON list)",
        )
    parts = Path(pattern).parts
    if ".." in parts:
        raise ScheduleError(f"{where}: must not contain '..'", field=GLOB_FIELD)
    fixed = Path(*takewhile(lambda part: not glob.has_magic(part), parts))
    if path_under_roots(fixed, roots) is None:
        shown = ", ".join(str(r) for r in roots)
        raise ScheduleError(
            f"{where}: not under the folders this server may read ({shown}; SOCE_CHECKPOINT_ROOTS)",
            field=GLOB_FIELD,
        )
