"""Optuna's own database read with SQLAlchemy Core: the API shows trials without importing optuna.

Only the columns we read are declared; Optuna owns these tables and their migrations.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    cast,
    create_engine,
    func,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from soce.errors import DatabaseError

_meta = MetaData()
studies = Table("studies", _meta, Column("study_id", Integer, primary_key=True), Column("study_name", String))
study_directions = Table(
    "study_directions",
    _meta,
    Column("study_direction_id", Integer, primary_key=True),
    Column("study_id", Integer),
    Column("objective", Integer),
    Column("direction", String),
)
trials = Table(
    "trials",
    _meta,
    Column("trial_id", Integer, primary_key=True),
    Column("number", Integer),
    Column("study_id", Integer),
    Column("state", String),
    Column("datetime_start", String),  # read as text: SQLite keeps no type, PostgreSQL gives a timestamp
    Column("datetime_complete", String),
)
trial_values = Table(
    "trial_values",
    _meta,
    Column("trial_value_id", Integer, primary_key=True),
    Column("trial_id", Integer),
    Column("objective", Integer),
    Column("value", Float),
    Column("value_type", String),
)
trial_params = Table(
    "trial_params",
    _meta,
    Column("param_id", Integer, primary_key=True),
    Column("trial_id", Integer),
    Column("param_name", String),
    Column("param_value", Float),
    Column("distribution_json", Text),
)
trial_user_attributes = Table(
    "trial_user_attributes",
    _meta,
    Column("trial_user_attribute_id", Integer, primary_key=True),
    Column("trial_id", Integer),
    Column("key", String),
    Column("value_json", Text),
)
_INFINITE = {"INF_POS": float("inf"), "INF_NEG": float("-inf")}
# PostgreSQL keeps the state in an enum type, which does not compare with a text parameter: cast it.
_state = cast(trials.c.state, String)


def _when(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _seconds(start: Any, end: Any) -> float | None:
    a, b = _when(start), _when(end)
    return (b - a).total_seconds() if a is not None and b is not None else None


def _param_value(internal: float, distribution_json: str) -> Any:
    """Optuna stores a categorical choice by index and an int as a float; give back the value."""
    try:
        dist = json.loads(distribution_json)
    except (TypeError, json.JSONDecodeError):
        return internal
    name, attrs = dist.get("name", ""), dist.get("attributes", {})
    if name == "CategoricalDistribution":
        return attrs.get("choices", [])[int(internal)]
    if name.startswith("Int"):
        return int(internal)
    return internal


class OptunaTables:
    """Reads studies and trials from Optuna's storage URL; a missing SQLite file is an empty storage."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def _connectable(self) -> Engine | None:
        parsed = make_url(self.url)
        if parsed.get_backend_name() == "sqlite":
            db = parsed.database
            if not db or db == ":memory:" or not Path(db).expanduser().is_file():
                return None  # never create Optuna's file: Optuna creates and migrates it
        with self._lock:
            if self._engine is None:
                self._engine = create_engine(parsed, pool_pre_ping=True)
        return self._engine

    def _where(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def _fail(self, e: SQLAlchemyError) -> DatabaseError:
        first = (str(getattr(e, "orig", None) or e).strip().splitlines() or [type(e).__name__])[0]
        return DatabaseError(f"Optuna database {self._where()} cannot be read ({first})")

    def study(self, study_name: str) -> tuple[int, list[str]] | None:
        """(study id, directions by objective) of the named study, or None when it is not stored."""
        engine = self._connectable()
        if engine is None:
            return None
        try:
            with engine.connect() as conn:
                study_id = conn.scalar(select(studies.c.study_id).where(studies.c.study_name == study_name))
                if study_id is None:
                    return None
                dirs = conn.execute(
                    select(study_directions.c.direction)
                    .where(study_directions.c.study_id == study_id)
                    .order_by(study_directions.c.objective)
                ).scalars()
                return study_id, [str(d).rsplit(".", 1)[-1].lower() for d in dirs]
        except SQLAlchemyError as e:
            if _missing_table(e):
                return None
            raise self._fail(e) from e

    def trials(
        self,
        study_id: int,
        *,
        state: str | None = None,
        number: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of the study's trials by number, each with values, params and user attributes."""
        engine = self._connectable()
        if engine is None:
            return [], 0
        where = [trials.c.study_id == study_id]
        if state is not None:
            where.append(_state == state.upper())
        if number is not None:
            where.append(trials.c.number == number)
        try:
            with engine.connect() as conn:
                total = conn.scalar(select(func.count()).select_from(trials).where(*where)) or 0
                rows = conn.execute(
                    select(trials).where(*where).order_by(trials.c.number).limit(limit).offset(offset)
                ).all()
                ids = [r.trial_id for r in rows]
                values: dict[int, dict[int, float | None]] = {i: {} for i in ids}
                params: dict[int, dict[str, Any]] = {i: {} for i in ids}
                attrs: dict[int, dict[str, Any]] = {i: {} for i in ids}
                if ids:
                    for v in conn.execute(select(trial_values).where(trial_values.c.trial_id.in_(ids))):
                        values[v.trial_id][v.objective] = _INFINITE.get(v.value_type, v.value)
                    for p in conn.execute(select(trial_params).where(trial_params.c.trial_id.in_(ids))):
                        params[p.trial_id][p.param_name] = _param_value(p.param_value, p.distribution_json)
                    attr_rows = conn.execute(
                        select(trial_user_attributes).where(trial_user_attributes.c.trial_id.in_(ids))
                    )
                    for a in attr_rows:
                        attrs[a.trial_id][a.key] = json.loads(a.value_json)
        except SQLAlchemyError as e:
            raise self._fail(e) from e
        out = [
            {
                "number": r.number,
                "state": str(r.state).rsplit(".", 1)[-1].lower(),
                "values": [values[r.trial_id][k] for k in sorted(values[r.trial_id])] or None,
                "params": params[r.trial_id],
                "user_attrs": attrs[r.trial_id],
                "datetime_start": _when(r.datetime_start),
                "datetime_complete": _when(r.datetime_complete),
                "duration_seconds": _seconds(r.datetime_start, r.datetime_complete),
            }
            for r in rows
        ]
        return out, total

    def best_trial(self, study_name: str) -> dict[str, Any] | None:
        """The best complete trial of a one-objective study (None for multi-objective or none finished)."""
        found = self.study(study_name)
        if found is None or len(found[1]) != 1:
            return None
        study_id, (direction,) = found
        engine = self._connectable()
        assert engine is not None
        order = trial_values.c.value.desc() if direction == "maximize" else trial_values.c.value.asc()
        try:
            with engine.connect() as conn:
                number = conn.scalar(
                    select(trials.c.number)
                    .join(trial_values, trial_values.c.trial_id == trials.c.trial_id)
                    .where(
                        trials.c.study_id == study_id,
                        _state == "COMPLETE",
                        trial_values.c.objective == 0,
                        trial_values.c.value.is_not(None),
                    )
                    .order_by(order, trials.c.number)
                    .limit(1)
                )
        except SQLAlchemyError as e:
            raise self._fail(e) from e
        if number is None:
            return None
        page, _ = self.trials(study_id, number=number, limit=1)
        return page[0] if page else None

    def complete_durations(self) -> list[float]:
        """Seconds each complete trial took, over every study (for /metrics)."""
        engine = self._connectable()
        if engine is None:
            return []
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    select(trials.c.datetime_start, trials.c.datetime_complete).where(_state == "COMPLETE")
                ).all()
        except SQLAlchemyError as e:
            if _missing_table(e):
                return []
            raise self._fail(e) from e
        return [s for s in (_seconds(a, b) for a, b in rows) if s is not None]

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def _missing_table(e: SQLAlchemyError) -> bool:
    """An empty storage (Optuna has not created its tables yet) reads as no studies."""
    text = str(getattr(e, "orig", None) or e).lower()
    return "no such table" in text or ("does not exist" in text and "relation" in text)
