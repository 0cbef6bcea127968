"""Small keyword-only data access functions; callers own the session (see session_scope)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.orm import Session

from soce.db.models import JOB_FINISHED_STATES, JOB_STATES, Candidate, CandidateTag, Job, Score, Suite
from soce.flow import JobState

_FIELDS = [c.key for c in Score.__table__.columns if c.key not in ("id", "created_at")]


def get_scores(*, session: Session, keys: Collection[str]) -> dict[str, Score]:
    """Stored scores by cache key; keys not stored are absent."""
    if not keys:
        return {}
    rows = session.scalars(select(Score).where(Score.key.in_(list(keys))))
    return {row.key: row for row in rows}


def add_scores(*, session: Session, scores: Sequence[Score]) -> None:
    """Store scores; a key already stored (say by a concurrent worker) keeps its first score."""
    if not scores:
        return
    values = [{f: getattr(s, f) for f in _FIELDS} for s in scores]
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        session.execute(dialect_insert(Score).on_conflict_do_nothing(index_elements=["key"]), values)
        return
    known = get_scores(session=session, keys=[v["key"] for v in values])
    fresh = [v for v in values if v["key"] not in known]
    if fresh:
        session.execute(insert(Score), fresh)


def delete_scores(*, session: Session, checkpoint_hash: str) -> int:
    """Forget every cached score of one checkpoint content; returns how many were removed."""
    rows = list(session.scalars(select(Score).where(Score.checkpoint_hash == checkpoint_hash)))
    for row in rows:
        session.delete(row)
    return len(rows)


# --- the service's registry and jobs (used by the API) ------------------------------------------


def get_candidate_by_path(*, session: Session, path: str) -> Candidate | None:
    """The candidate registered for this (resolved) folder path, if any."""
    return session.scalar(select(Candidate).where(Candidate.path == path).order_by(Candidate.id).limit(1))


def list_candidates(*, session: Session, tag: str | None = None) -> list[Candidate]:
    """Registered candidates, oldest first; with `tag`, only those carrying it."""
    query = select(Candidate).order_by(Candidate.id)
    if tag is not None:
        query = query.join(CandidateTag).where(CandidateTag.tag == tag)
    return list(session.scalars(query))


def get_candidates(*, session: Session, ids: Collection[int]) -> list[Candidate]:
    """The candidates with these ids, by id; ids not registered are absent."""
    if not ids:
        return []
    return list(session.scalars(select(Candidate).where(Candidate.id.in_(list(ids))).order_by(Candidate.id)))


def get_suite_by_hash(*, session: Session, content_hash: str) -> Suite | None:
    return session.scalar(select(Suite).where(Suite.content_hash == content_hash))


def get_job_by_idempotency_key(*, session: Session, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.idempotency_key == key))


def create_job(
    *,
    session: Session,
    name: str,
    suite: Suite,
    candidates: Sequence[Candidate],
    recipe: dict[str, Any],
    idempotency_key: str | None = None,
) -> Job:
    """A new job in state queued (flushed, not committed: the caller commits, then enqueues)."""
    job = Job(
        name=name,
        suite=suite,
        candidates=list(candidates),
        recipe=recipe,
        state=JobState.QUEUED,
        progress={},
        timings={},
        idempotency_key=idempotency_key,
    )
    session.add(job)
    session.flush()
    return job


def list_jobs(
    *, session: Session, state: str | None = None, name: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[Job], int]:
    """A page of jobs, newest first, and how many match in all; `name` matches a substring, any case."""
    where = []
    if state is not None:
        where.append(Job.state == state)
    if name is not None:
        where.append(func.lower(Job.name).contains(name.lower(), autoescape=True))
    total = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
    rows = session.scalars(select(Job).where(*where).order_by(Job.id.desc()).limit(limit).offset(offset))
    return list(rows), total


def count_jobs_by_state(*, session: Session) -> dict[str, int]:
    """How many jobs are in each state; every state is present, with 0 when none is."""
    counts = dict.fromkeys(JOB_STATES, 0)
    for state, n in session.execute(select(Job.state, func.count()).group_by(Job.state)):
        counts[state] = n
    return counts


def cancel_job(*, session: Session, job_id: int, now: datetime | None = None) -> bool:
    """Mark a job cancelled unless it has finished; one conditional UPDATE, so a racing worker loses cleanly.

    Returns whether this call cancelled it. The workers check the state before each step and trial.
    """
    now = now or datetime.now(UTC)
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.not_in(JOB_FINISHED_STATES))
        .values(state=JobState.CANCELLED, finished_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def count_stalled_jobs(*, session: Session, now: datetime, stall_seconds: float) -> int:
    """Active jobs whose row and heartbeat are both older than `stall_seconds`: no progress, and no
    worker proving it runs one of their tasks (their message is lost, or waits behind other work)."""
    cutoff = now - timedelta(seconds=stall_seconds)
    query = select(func.count()).where(
        Job.state.not_in(JOB_FINISHED_STATES),
        Job.updated_at < cutoff,
        or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff),
    )
    return int(session.scalar(query) or 0)
