"""Schedule rows from checked specs (soce.db.schedules), on PostgreSQL and SQLite: the first run is
planned in the schedule's time zone, updates change only the given fields and plan again only when the
timing changes, and an unknown suite is refused before anything changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from soce.db import Suite, session_scope
from soce.db.migrate import upgrade
from soce.db.schedules import create_schedule, get_schedule_by_name, list_schedules, update_schedule
from soce.errors import DatabaseError, ScheduleError
from soce.schemas.schedule import ScheduleCreate, ScheduleUpdate

NOW = datetime(2026, 11, 22, 2, 0, tzinfo=UTC)  # a Sunday, 03:00 in Paris


@pytest.fixture
def engine(empty_engine: Engine) -> Engine:
    upgrade(empty_engine)
    return empty_engine


@pytest.fixture
def suite_id(engine: Engine) -> int:
    with session_scope(engine) as session:
        suite = Suite(name="s", spec={}, content_hash="s" * 64)
        session.add(suite)
        session.flush()
        return suite.id


def _spec(suite_id: int, **over: Any) -> ScheduleCreate:
    body = {
        "name": "nightly",
        "cron": "0 2 * * *",
        "timezone": "Europe/Paris",
        "recipe_template": {"suite_id": suite_id, "sampler": "grid"},
        "candidate_source": {"tag": "nightly"},
        "promotion_policy": {"min_improvement": 0.01},
        "webhook_url": "https://ci.example/hook",
    }
    return ScheduleCreate.model_validate({**body, **over})


def _update(**fields: Any) -> ScheduleUpdate:
    return ScheduleUpdate.model_validate(fields)


def test_create_stores_the_spec_and_plans_the_first_run(engine: Engine, suite_id: int) -> None:
    with session_scope(engine) as session:
        row = create_schedule(session=session, spec=_spec(suite_id), now=NOW)
        assert row.id is not None  # flushed: the caller can print it
    with session_scope(engine) as session:
        row = get_schedule_by_name(session=session, name="nightly")
        assert row is not None
        assert row.next_run_at == datetime(2026, 11, 23, 1, 0, tzinfo=UTC)  # 02:00 in Paris
        assert (row.cron, row.timezone, row.enabled) == ("0 2 * * *", "Europe/Paris", True)
        assert row.recipe_template["suite_id"] == suite_id and row.recipe_template["sampler"] == "grid"
        assert row.recipe_template["tau"] == 0.5  # completed with the run recipe's defaults
        assert row.candidate_source == {"tag": "nightly"}
        assert row.promotion_policy == {"metric": "test_average", "min_improvement": 0.01}
        assert row.webhook_url == "https://ci.example/hook"
        assert get_schedule_by_name(session=session, name="weekly") is None


def test_create_refuses_an_unknown_suite_and_a_taken_name(engine: Engine, suite_id: int) -> None:
    with pytest.raises(ScheduleError, match=r"^suite 999 does not exist$"), session_scope(engine) as session:
        create_schedule(session=session, spec=_spec(999), now=NOW)
    with session_scope(engine) as session:
        assert list_schedules(session=session) == []
        create_schedule(session=session, spec=_spec(suite_id), now=NOW)
    with pytest.raises(DatabaseError), session_scope(engine) as session:  # the unique name
        create_schedule(session=session, spec=_spec(suite_id, cron="0 3 * * *"), now=NOW)
    with session_scope(engine) as session:
        assert [r.cron for r in list_schedules(session=session)] == ["0 2 * * *"]


def test_update_changes_the_given_fields_and_plans_again_when_the_timing_changes(
    engine: Engine, suite_id: int
) -> None:
    later = NOW + timedelta(days=3)  # Wednesday 03:00 in Paris
    with session_scope(engine) as session:
        row = create_schedule(session=session, spec=_spec(suite_id), now=NOW)
        first = row.next_run_at

        policy = {"min_improvement": 0.05}
        update_schedule(
            session=session,
            schedule=row,
            spec=_update(promotion_policy=policy, candidate_source={"glob": "/c/*"}),
            checkpoint_roots=[Path("/c")],
        )
        assert row.promotion_policy == {"metric": "test_average", "min_improvement": 0.05}
        assert row.candidate_source == {"glob": "/c/*"}
        assert row.next_run_at == first and row.webhook_url == "https://ci.example/hook"

        update_schedule(session=session, schedule=row, spec=_update(cron="30 5 * * 1"), now=later)
        assert row.next_run_at == datetime(2026, 11, 30, 4, 30, tzinfo=UTC)  # Monday 05:30 in Paris
        assert row.timezone == "Europe/Paris"

        update_schedule(session=session, schedule=row, spec=_update(timezone="UTC"), now=later)
        assert row.next_run_at == datetime(2026, 11, 30, 5, 30, tzinfo=UTC)

        update_schedule(session=session, schedule=row, spec=_update(enabled=False), now=later)
        assert not row.enabled and row.next_run_at == datetime(2026, 11, 30, 5, 30, tzinfo=UTC)
        update_schedule(session=session, schedule=row, spec=_update(enabled=False), now=later)
        assert row.next_run_at == datetime(2026, 11, 30, 5, 30, tzinfo=UTC)

        back = later + timedelta(days=7)  # enabled again after the planned run went by: planned anew
        update_schedule(session=session, schedule=row, spec=_update(enabled=True), now=back)
        assert row.enabled and row.next_run_at == datetime(2026, 12, 7, 5, 30, tzinfo=UTC)
        update_schedule(
            session=session, schedule=row, spec=_update(enabled=True), now=back + timedelta(days=9)
        )
        assert row.next_run_at == datetime(2026, 12, 7, 5, 30, tzinfo=UTC)  # already enabled: kept

        update_schedule(session=session, schedule=row, spec=_update(webhook_url=None))
        assert row.webhook_url is None and row.cron == "30 5 * * 1"
    with session_scope(engine) as session:
        stored = get_schedule_by_name(session=session, name="nightly")
        assert stored is not None and (stored.cron, stored.timezone, stored.enabled) == (
            "30 5 * * 1",
            "UTC",
            True,
        )


def test_update_refuses_an_unknown_suite_and_changes_nothing(engine: Engine, suite_id: int) -> None:
    with session_scope(engine) as session:
        row = create_schedule(session=session, spec=_spec(suite_id), now=NOW)
        spec = _update(recipe_template={"suite_id": 999}, cron="0 4 * * *", enabled=False)
        with pytest.raises(ScheduleError, match=r"^suite 999 does not exist$"):
            update_schedule(session=session, schedule=row, spec=spec, now=NOW)
        assert (row.cron, row.enabled, row.recipe_template["suite_id"]) == ("0 2 * * *", True, suite_id)
        update_schedule(session=session, schedule=row, spec=_update(recipe_template={"suite_id": suite_id}))
        assert row.recipe_template["sampler"] == "tpe"  # the whole recipe is replaced, defaults filled in


def test_list_is_by_name(engine: Engine, suite_id: int) -> None:
    with session_scope(engine) as session:
        for name in ("weekly", "hourly", "nightly"):
            create_schedule(session=session, spec=_spec(suite_id, name=name), now=NOW)
    with session_scope(engine) as session:
        assert [r.name for r in list_schedules(session=session)] == ["hourly", "nightly", "weekly"]
