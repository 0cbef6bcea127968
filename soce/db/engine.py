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
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def create_app_engine(url: str) -> Engine:
    """A new engine; for SQLite the file's folder is created and the connection tuned."""
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
    return create_engine(parsed, pool_pre_ping=True)


def get_engine(url: str | None = None) -> Engine:
    """The shared engine for `url` (default: Settings); embedded SQLite is migrated on first use."""
    url = url or get_settings().app_database_url()
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_app_engine(url)
            if engine.dialect.name == "sqlite":  # embedded mode: no separate migrate step
                from soce.db.migrate import ensure_schema

                ensure_schema(engine)
            _engines[url] = engine
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
