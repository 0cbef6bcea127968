"""Small keyword-only data access functions; callers own the session (see session_scope)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from soce.db.models import Score

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
