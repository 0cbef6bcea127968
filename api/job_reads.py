"""The job reads behind GET /v1/jobs and GET /v1/jobs/{id}: the columns a response shows, in few queries.

Loading `Job` entities would decode every JSON column and load the suite with its spec and whole
candidate rows (with their tags) for each job, only to show a few fields. These read columns of the
tables with SQLAlchemy Core instead: a page of jobs is one query (its rows, each one's candidate ids
and the total), one job two (its row with the suite's name and the latest soup, then its candidates).

The routes run them through `read`: on a connection of its own in autocommit mode (no BEGIN and
ROLLBACK round trips; a job's candidates never change once it is stored, so its two queries need no
common snapshot), again on a new connection when the first turns out to be dead.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import cache
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    Row,
    Select,
    String,
    Table,
    bindparam,
    cast,
    func,
    select,
    type_coerce,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from api.schemas import CandidateBrief, SoupBrief, SuiteBrief
from soce.db.models import Candidate, Job, Soup, Suite, job_candidates

jobs: Table = Job.__table__  # type: ignore[assignment]
suites: Table = Suite.__table__  # type: ignore[assignment]
soups: Table = Soup.__table__  # type: ignore[assignment]
candidates: Table = Candidate.__table__  # type: ignore[assignment]

_TIMES = ("created_at", "updated_at", "started_at", "finished_at")
# What a list item shows (JobPublic's fields but candidate_ids): no recipe, analysis or timings. The
# timestamps come as the driver gives them, not through UTCDateTime's processing (a fifth of a page's
# read): _utc does the same for the few that are not in UTC already (the API's PostgreSQL sessions run
# in UTC, see soce/db/engine.py; SQLite gives naive ones).
_LISTED = (
    jobs.c.id,
    jobs.c.name,
    jobs.c.state,
    jobs.c.suite_id,
    jobs.c.progress,
    jobs.c.error,
    *(type_coerce(jobs.c[t], DateTime(timezone=True)).label(t) for t in _TIMES),
)
# One job, built once: its row with the suite's name and its latest soup, then its candidates.
_JOB_ID = bindparam("job_id")
_DETAIL = (
    select(
        *_LISTED,
        jobs.c.recipe,
        jobs.c.timings,
        jobs.c.analysis,
        jobs.c.study_name,
        suites.c.name.label("suite_name"),
        soups.c.id.label("soup_id"),
        soups.c.path.label("soup_path"),
        soups.c.content_hash.label("soup_content_hash"),
        soups.c.weights.label("soup_weights"),
        soups.c.scores.label("soup_scores"),
    )
    .join(suites, suites.c.id == jobs.c.suite_id)
    .outerjoin(
        soups, soups.c.id == select(func.max(soups.c.id)).where(soups.c.job_id == _JOB_ID).scalar_subquery()
    )
    .where(jobs.c.id == _JOB_ID)
)
_CANDIDATES = (
    select(candidates.c.id, candidates.c.name, candidates.c.path, candidates.c.content_hash)
    .join(job_candidates, job_candidates.c.candidate_id == candidates.c.id)
    .where(job_candidates.c.job_id == _JOB_ID)
    .order_by(candidates.c.id)
)


T = TypeVar("T")


def read(engine: Engine, query: Callable[..., T], /, **params: Any) -> T:
    """`query(session=connection, **params)` on an autocommit connection; once more if it was dead.

    The API's engine does not test connections when they are checked out (soce/db/engine.py), so a
    connection the server closed (a restart, an idle timeout) shows up here as an error that
    invalidates it and the pool's older ones: a read is safe to repeat, on a new connection.
    """
    try:
        return _autocommit(engine, query, params)
    except DBAPIError as e:
        if not e.connection_invalidated:
            raise
    return _autocommit(engine, query, params)


def _autocommit(engine: Engine, query: Callable[..., T], params: dict[str, Any]) -> T:
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        return query(session=connection, **params)


def _utc(value: datetime | None) -> datetime | None:
    """UTCDateTime's reading of a timestamp: aware, in UTC."""
    if value is None or value.tzinfo is UTC:
        return value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _public(row: Row[Any], candidate_ids: list[int]) -> dict[str, Any]:
    """JobPublic's fields, in its order, of a row that starts with the _LISTED columns."""
    job_id, name, state, suite_id, progress, error, created, updated, started, finished = row[:10]
    return {
        "id": job_id,
        "name": name,
        "state": state,
        "suite_id": suite_id,
        "candidate_ids": candidate_ids,
        "progress": progress or {},
        "error": error,
        "created_at": _utc(created),
        "updated_at": _utc(updated),
        "started_at": _utc(started),
        "finished_at": _utc(finished),
    }


def _ids(joined: str | None) -> list[int]:
    return sorted(map(int, joined.split(","))) if joined else []


def _escape_like(text: str) -> str:
    return text.replace("/", "//").replace("%", "/%").replace("_", "/_")


@cache
def _page_queries(by_state: bool, by_name: bool) -> tuple[Select[Any], Select[Any]]:
    """(the page, the total) for these filters, built once; parameters state, pattern, limit, offset.

    The page first, then for each of its rows (not for the rows the offset skips) the candidate ids
    as "3,1,2" (string_agg on PostgreSQL, group_concat on SQLite); the total is computed once.
    """
    where = []
    if by_state:
        where.append(jobs.c.state == bindparam("state"))
    if by_name:
        where.append(func.lower(jobs.c.name).like(bindparam("pattern"), escape="/"))
    page = (
        select(*_LISTED)
        .where(*where)
        .order_by(jobs.c.id.desc())
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
        .subquery("page")
    )
    ids = (
        select(func.aggregate_strings(cast(job_candidates.c.candidate_id, String), ","))
        .where(job_candidates.c.job_id == page.c.id)
        .scalar_subquery()
    )
    total = select(func.count()).select_from(jobs).where(*where)
    query = select(page, ids.label("candidate_ids"), total.scalar_subquery().label("total"))
    return query.order_by(page.c.id.desc()), total


def job_page(
    *,
    session: Session | Connection,
    state: str | None = None,
    name: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """A page of jobs (JobPublic's fields), newest first, and how many match in all.

    `name` matches a substring, in any case.
    """
    query, total = _page_queries(state is not None, name is not None)
    params = {"state": state, "limit": limit, "offset": offset}
    if name is not None:
        params["pattern"] = f"%{_escape_like(name.lower())}%"
    rows = session.execute(query, params).all()
    if rows:
        count = rows[0].total
    elif offset:  # past the end: no row carries the total
        count = session.scalar(total, params) or 0
    else:
        count = 0
    return [_public(r, _ids(r.candidate_ids)) for r in rows], count


def job_detail(*, session: Session | Connection, job_id: int) -> dict[str, Any] | None:
    """JobDetail's fields of one job but the best trial and the analysis' parts; None if there is none."""
    row = session.execute(_DETAIL, {"job_id": job_id}).one_or_none()
    if row is None:
        return None
    members = session.execute(_CANDIDATES, {"job_id": job_id}).all()
    return {
        **_public(row, [c.id for c in members]),
        "recipe": row.recipe,
        "suite": SuiteBrief(id=row.suite_id, name=row.suite_name),
        "candidates": [
            CandidateBrief(id=c.id, name=c.name, path=c.path, content_hash=c.content_hash) for c in members
        ],
        "timings": row.timings or {},
        "study_name": row.study_name,
        "analysis": row.analysis,
        "soup": None
        if row.soup_id is None
        else SoupBrief(
            id=row.soup_id,
            path=row.soup_path,
            content_hash=row.soup_content_hash,
            weights=row.soup_weights or {},
            scores=row.soup_scores or {},
        ),
    }
