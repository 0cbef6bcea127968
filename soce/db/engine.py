"""The app database: one engine per URL, and the one place that owns transactions."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session

from soce.config import get_settings
from soce.errors import DatabaseError

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def describe(engine: Engine) -> str:
    """The engine's URL without its password, for messages."""
    return engine.url.render_as_string(hide_password=True)


def _first_line(error: BaseException) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return lines[0] if lines else type(error).__name__


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never wait for the one writer
    # with WAL, NORMAL syncs at checkpoints, not at every commit: a crash of the process loses
    # nothing, a power cut at most the last commits; the job's progress is written per trial
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


# Serving engines (pre_ping=False) renew a connection after this long, before a server or proxy idle
# timeout can close it under us; a connection found dead anyway invalidates the pool, so that the
# others are replaced at their next checkout, and readers retry once (api/job_reads.read).
RECYCLE_SECONDS = 1800
# per process: enough for the API's thread pool to keep a few queries in flight; fixed, so that a burst
# makes threads wait for a connection instead of opening and closing extra ones
SERVING_POOL_SIZE = 10


def create_app_engine(url: str, *, pre_ping: bool = True) -> Engine:
    """A new engine; for SQLite the file's folder is created and the connection tuned.

    `pre_ping` tests each PostgreSQL connection with a round trip when it is checked out (workers, whose
    connections may sit idle for hours); the API turns it off (one round trip less per request) and
    keeps a fixed pool of recycled connections instead.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise DatabaseError(f"database URL {url!r} is invalid ({e})") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if pre_ping:
        return create_engine(parsed, pool_pre_ping=True)
    import orjson  # JSON columns decoded in C: a page of jobs has a progress document per row

    # sessions in UTC: timestamps arrive as UTC datetimes, with nothing to convert (api/job_reads.py)
    options = " ".join(filter(None, (parsed.query.get("options"), "-c TimeZone=UTC")))
    return create_engine(
        parsed,
        pool_size=SERVING_POOL_SIZE,
        max_overflow=0,
        pool_recycle=RECYCLE_SECONDS,
        pool_use_lifo=True,
        json_deserializer=orjson.loads,
        connect_args={"options": options},
    )


def get_engine(url: str | None = None, *, pre_ping: bool = True) -> Engine:
    """The shared engine for `url` (default: Settings); embedded SQLite is migrated on first use.

    PostgreSQL engines with and without `pre_ping` (see create_app_engine) are separate pools.
    """
    url = url or get_settings().app_database_url()
    key = url if pre_ping or url.startswith("sqlite") else f"{url} (serving)"
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = create_app_engine(url, pre_ping=pre_ping)
            if engine.dialect.name == "sqlite":  # embedded mode: no separate migrate step
                from soce.db.migrate import ensure_schema

                ensure_schema(engine)
            _engines[key] = engine
    return engine


def dispose_engines() -> None:
    """Close every shared engine (tests, and before a process forks)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


@contextmanager
def session_scope(engine: Engine | None = None) -> Iterator[Session]:
    """A session that commits when the block ends, or rolls back and raises DatabaseError."""
    engine = engine or get_engine()
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except SQLAlchemyError as e:
        session.rollback()
        raise DatabaseError(f"database {describe(engine)}: {_first_line(e)}") from e
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
