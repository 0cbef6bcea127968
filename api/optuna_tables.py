"""Optuna's own database read with SQLAlchemy Core: the API shows trials without importing optuna.

Only the columns we read are declared; Optuna owns these tables and their migrations.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict, defaultdict
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
    bindparam,
    case,
    cast,
    create_engine,
    func,
    literal_column,
    null,
    select,
    union_all,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.selectable import CTE, CompoundSelect

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


class _CompleteTrials:
    """Complete trials by (study name, number), the least recently read dropped first.

    Optuna refuses to change a finished trial, so a complete one read once stays true.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._trials: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, study_name: str, number: int) -> dict[str, Any] | None:
        with self._lock:
            trial = self._trials.get((study_name, number))
            if trial is not None:
                self._trials.move_to_end((study_name, number))
            return trial

    def put(self, study_name: str, trial: dict[str, Any]) -> None:
        with self._lock:
            self._trials[study_name, trial["number"]] = trial
            if len(self._trials) > self.size:
                self._trials.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._trials.clear()


class OptunaTables:
    """Reads studies and trials from Optuna's storage URL; a missing SQLite file is an empty storage."""

    def __init__(self, url: str, *, cached_trials: int = 4096) -> None:
        self.url = url
        self._parsed = make_url(url)
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self._complete = _CompleteTrials(cached_trials)

    def _connectable(self) -> Engine | None:
        """The one pooled engine, made on first use and kept until close()."""
        parsed = self._parsed
        if parsed.get_backend_name() == "sqlite":
            db = parsed.database
            if not db or db == ":memory:" or not Path(db).expanduser().is_file():
                return None  # never create Optuna's file: Optuna creates and migrates it
        with self._lock:
            if self._engine is None:
                self._engine = create_engine(parsed, pool_pre_ping=True)
        return self._engine

    def _where(self) -> str:
        return self._parsed.render_as_string(hide_password=True)

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
        page = select(trials.c.trial_id).where(*where).order_by(trials.c.number).limit(limit).offset(offset)
        try:
            with engine.connect() as conn:
                total = conn.scalar(select(func.count()).select_from(trials).where(*where)) or 0
                return _read_trials(conn, _with_details(page.cte("page"))), total
        except SQLAlchemyError as e:
            raise self._fail(e) from e

    def best_trial(self, study_name: str, *, number: int | None = None) -> dict[str, Any] | None:
        """The best complete trial of a one-objective study (None for multi-objective or none finished).

        With `number` (the best trial as the job's search recorded it), that trial of a one-objective
        study. One connection, one query; a complete trial never changes, so it is kept for later calls.
        """
        if number is not None and (kept := self._complete.get(study_name, number)) is not None:
            return kept
        engine = self._connectable()
        if engine is None:
            return None
        query = _BEST_TRIAL if number is None else _TRIAL_NUMBER
        try:
            with engine.connect() as conn:
                found = _read_trials(conn, query, {"study_name": study_name, "number": number})
        except SQLAlchemyError as e:
            if _missing_table(e):
                return None
            raise self._fail(e) from e
        if not found:
            return None
        best = found[0]
        if best["state"] == "complete":
            self._complete.put(study_name, best)
        return best

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
        self._complete.clear()
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def _with_details(chosen: CTE) -> CompoundSelect:
    """One query for the trials whose ids `chosen` selects, with their values, params and user attributes.

    A UNION ALL of a row per trial, per value, per param and per user attribute, in the columns
    (kind, trial id, row id, index, name, number, text, text2); PostgreSQL's enums and timestamps are
    cast to text so that the branches line up.
    """
    ids = select(chosen.c.trial_id)
    no_int, no_float, no_text = cast(null(), Integer), cast(null(), Float), cast(null(), Text)
    branches = (
        select(  # the first branch names the columns
            literal_column("'trial'").label("kind"),
            trials.c.trial_id.label("trial_id"),
            trials.c.trial_id.label("row_id"),
            trials.c.number.label("index"),
            _state.label("name"),
            no_float.label("number"),
            cast(trials.c.datetime_start, Text).label("text"),
            cast(trials.c.datetime_complete, Text).label("text2"),
        ).where(trials.c.trial_id.in_(ids)),
        select(
            literal_column("'value'"),
            trial_values.c.trial_id,
            trial_values.c.trial_value_id,
            trial_values.c.objective,
            cast(trial_values.c.value_type, String),
            trial_values.c.value,
            no_text,
            no_text,
        ).where(trial_values.c.trial_id.in_(ids)),
        select(
            literal_column("'param'"),
            trial_params.c.trial_id,
            trial_params.c.param_id,
            no_int,
            trial_params.c.param_name,
            trial_params.c.param_value,
            trial_params.c.distribution_json,
            no_text,
        ).where(trial_params.c.trial_id.in_(ids)),
        select(
            literal_column("'attr'"),
            trial_user_attributes.c.trial_id,
            trial_user_attributes.c.trial_user_attribute_id,
            no_int,
            trial_user_attributes.c.key,
            no_float,
            trial_user_attributes.c.value_json,
            no_text,
        ).where(trial_user_attributes.c.trial_id.in_(ids)),
    )
    rows = union_all(*branches)
    return rows.order_by(rows.selected_columns.row_id)  # each table's rows in the order written


def _read_trials(
    conn: Connection, query: CompoundSelect, bound: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The trials a _with_details query reads (with parameters `bound`), by number."""
    heads: dict[int, tuple[int, str, Any, Any]] = {}
    values: dict[int, dict[int, float | None]] = defaultdict(dict)
    params: dict[int, dict[str, Any]] = defaultdict(dict)
    attrs: dict[int, dict[str, Any]] = defaultdict(dict)
    for kind, trial_id, _row, index, name, number, text, text2 in conn.execute(query, bound):
        if kind == "trial":
            heads[trial_id] = (index, name, text, text2)
        elif kind == "value":
            values[trial_id][index] = _INFINITE.get(name, number)
        elif kind == "param":
            params[trial_id][name] = _param_value(number, text)
        else:
            attrs[trial_id][name] = json.loads(text)
    out = [
        {
            "number": number,
            "state": str(state).rsplit(".", 1)[-1].lower(),
            "values": [values[trial_id][k] for k in sorted(values[trial_id])] or None,
            "params": params[trial_id],
            "user_attrs": attrs[trial_id],
            "datetime_start": _when(start),
            "datetime_complete": _when(end),
            "duration_seconds": _seconds(start, end),
        }
        for trial_id, (number, state, start, end) in heads.items()
    ]
    return sorted(out, key=lambda t: t["number"])


def _best_trial_queries() -> tuple[CompoundSelect, CompoundSelect]:
    """(the best trial, trial `number`) of the one-objective study `study_name`, with their details."""
    other_objective = study_directions.alias("other_objective")
    one_objective = ~(
        select(other_objective.c.study_id)
        .where(other_objective.c.study_id == studies.c.study_id, other_objective.c.objective != 0)
        .exists()
    )
    of_study = (
        select(trials.c.trial_id)
        .join(studies, studies.c.study_id == trials.c.study_id)
        .join(study_directions, study_directions.c.study_id == studies.c.study_id)
        .where(
            studies.c.study_name == bindparam("study_name"), study_directions.c.objective == 0, one_objective
        )
    )
    # the best value of objective 0 in the study's direction; ties go to the first trial
    value = trial_values.c.value
    maximize = cast(study_directions.c.direction, String).endswith("MAXIMIZE")
    best = (
        of_study.join(trial_values, trial_values.c.trial_id == trials.c.trial_id)
        .where(_state == "COMPLETE", trial_values.c.objective == 0, value.is_not(None))
        .order_by(case((maximize, -value), else_=value), trials.c.number)
        .limit(1)
    )
    numbered = of_study.where(trials.c.number == bindparam("number"))
    return _with_details(best.cte("chosen")), _with_details(numbered.cte("chosen"))


_BEST_TRIAL, _TRIAL_NUMBER = _best_trial_queries()


def _missing_table(e: SQLAlchemyError) -> bool:
    """An empty storage (Optuna has not created its tables yet) reads as no studies."""
    text = str(getattr(e, "orig", None) or e).lower()
    return "no such table" in text or ("does not exist" in text and "relation" in text)
