"""The API against a real PostgreSQL (a throwaway database per module) and the real Redis (db 15).

PostgreSQL must run on 127.0.0.1 with trust auth for user postgres and Redis on 127.0.0.1:6379
(.ci/run starts both; DESIGN.md says how by hand). SOCE_TEST_POSTGRES_URL and SOCE_TEST_REDIS_URL
point elsewhere. Without them the tests fail: they never skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from api.app import create_app
from soce.config import Settings
from soce.db import create_api_key, create_app_engine, dispose_engines, session_scope
from soce.db.migrate import upgrade

ADMIN_URL = os.environ.get("SOCE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("SOCE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")  # a db of its own
TABLES = "candidates, candidate_tags, suites, jobs, job_candidates, soups, api_keys, scores"


@pytest.fixture(scope="module")
def api_database_url() -> Iterator[str]:
    """A new PostgreSQL database with a random name, migrated to head; dropped after the module."""
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"soce_api_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as e:
        admin.dispose()
        pytest.fail(
            f"PostgreSQL at {make_url(ADMIN_URL).render_as_string()} is not usable ({e})", pytrace=False
        )
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        engine = create_app_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url
    finally:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    """The test Redis database, empty at the start and at the end."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    except redis.RedisError as e:
        pytest.fail(f"Redis at {REDIS_URL} is not reachable ({e})", pytrace=False)
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def settings(api_database_url: str, redis_db: redis.Redis, tmp_path: Path) -> Settings:
    with create_app_engine(api_database_url).begin() as conn:  # every test starts from empty tables
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    return Settings(
        database_url=api_database_url,
        broker_url=REDIS_URL,
        optuna_storage_url=f"sqlite:///{tmp_path / 'optuna.sqlite'}",
        data_dir=tmp_path / "data",
        checkpoint_roots=[tmp_path],  # the test's checkpoints and suite files
    )


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def keys(app: FastAPI) -> dict[str, dict[str, str]]:
    """Authorization headers: 'writer' (read-write) and 'reader' (read-only)."""
    with session_scope(app.state.engine) as session:
        _, writer = create_api_key(session=session, name="writer")
        _, reader = create_api_key(session=session, name="reader", read_only=True)
    return {
        "writer": {"Authorization": f"Bearer {writer}"},
        "reader": {"Authorization": f"Bearer {reader}"},
    }


@pytest.fixture
def writer(keys: dict[str, dict[str, str]]) -> dict[str, str]:
    return keys["writer"]
