"""A real PostgreSQL for database tests: each test gets a throwaway database, dropped afterwards.

PostgreSQL must run on 127.0.0.1 with trust auth for user postgres (.ci/run starts it; DESIGN.md says
how by hand); SOCE_TEST_POSTGRES_URL points elsewhere. Without it the tests fail: they never skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from soce.db import create_app_engine

ADMIN_URL = os.environ.get("SOCE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["postgresql", "sqlite"]


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    """An engine on the server's maintenance database, for CREATE and DROP DATABASE."""
    engine = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)  # survives a restart
    cause = None
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as e:
        cause = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
    if cause is not None:  # outside the except block, so the message is not buried in a traceback
        engine.dispose()
        where = make_url(ADMIN_URL).render_as_string(hide_password=True)
        pytest.fail(
            f"PostgreSQL is not reachable at {where} ({cause}). Start it with `pg_ctlcluster "
            "--skip-systemctl-redirect $(ls /etc/postgresql) main start` (.ci/run does), or set "
            "SOCE_TEST_POSTGRES_URL",
            pytrace=False,
        )
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_url(postgres_admin: Engine) -> Iterator[str]:
    """The URL of a new, empty database with a random name; dropped when the test ends."""
    name = f"soce_test_{uuid.uuid4().hex[:12]}"
    with postgres_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with postgres_admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty app database on each backend: the same test runs on PostgreSQL and on SQLite."""
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'app.sqlite'}"


@pytest.fixture
def empty_engine(database_url: str) -> Iterator[Engine]:
    engine = create_app_engine(database_url)
    yield engine
    engine.dispose()
