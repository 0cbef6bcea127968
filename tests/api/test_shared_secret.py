"""Dashboard sessions signed by one API process are accepted by every other: without
SOCE_DASHBOARD_SECRET, the processes share one secret kept in the app database."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select

from api.app import create_app
from api.dashboard_session import COOKIE, make_cookie, signing_key, stored_secret
from soce.config import Settings
from soce.db import create_api_key, get_engine, session_scope
from soce.db.models import AppSecret


@pytest.fixture
def private(settings: Settings) -> Settings:
    """The test settings with reading behind a key or a sign-in, and no secret stored yet."""
    with session_scope(get_engine(settings.app_database_url())) as session:
        session.execute(delete(AppSecret))
    return settings.model_copy(update={"dashboard_public_read": False})


@pytest.fixture
def reader_key(settings: Settings) -> tuple[int, str]:
    with session_scope(get_engine(settings.app_database_url())) as session:
        row, key = create_api_key(session=session, name="reader", read_only=True)
    return row.id, key


def _sign_in(client: TestClient, key: str) -> str:
    r = client.post("/signin", data={"key": key, "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return r.cookies[COOKIE]


def _stored(settings: Settings) -> list[str]:
    with session_scope(get_engine(settings.app_database_url())) as session:
        return list(session.scalars(select(AppSecret.value)))


def test_a_session_signed_by_one_app_is_accepted_by_another(
    private: Settings, reader_key: tuple[int, str]
) -> None:
    assert private.dashboard_secret is None
    first, second = create_app(private), create_app(private)
    with TestClient(first) as one, TestClient(second) as other:
        cookie = _sign_in(one, reader_key[1])
        assert other.get("/v1/jobs").status_code == 401
        other.cookies.set(COOKIE, cookie)
        assert other.get("/v1/jobs").status_code == 200
        assert other.get("/dashboard/jobs/rows").status_code == 200
    (value,) = _stored(private)
    assert first.state.dashboard_secret == second.state.dashboard_secret == signing_key(value)

    with TestClient(create_app(private)) as restarted:  # a restart keeps everyone signed in
        restarted.cookies.set(COOKIE, cookie)
        assert restarted.get("/v1/jobs").status_code == 200


def test_processes_starting_together_store_one_secret(private: Settings) -> None:
    engine = get_engine(private.app_database_url())
    start = threading.Barrier(8)
    found: list[str] = []

    def first_use() -> None:
        start.wait()
        found.append(stored_secret(engine))

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(found) == 8 and len(set(found)) == 1
    assert _stored(private) == found[:1]
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(AppSecret)) == 1


def test_the_environments_secret_is_used_when_set(
    private: Settings, reader_key: tuple[int, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SOCE_DASHBOARD_SECRET", "from-the-environment")
    fields = ("database_url", "broker_url", "optuna_storage_url", "data_dir", "checkpoint_roots")
    from_env = Settings(dashboard_public_read=False, **{f: getattr(private, f) for f in fields})
    assert from_env.dashboard_secret == "from-the-environment"
    app = create_app(from_env)
    assert app.state.dashboard_secret == signing_key("from-the-environment")
    with TestClient(app) as client:
        client.cookies.set(COOKIE, make_cookie(signing_key("from-the-environment"), reader_key[0]))
        assert client.get("/v1/jobs").status_code == 200
        client.cookies.set(COOKIE, make_cookie(signing_key("another secret"), reader_key[0]))
        assert client.get("/v1/jobs").status_code == 401
        client.cookies.clear()
        cookie = _sign_in(client, reader_key[1])
    assert _stored(private) == []  # nothing generated or stored
    with TestClient(create_app(private)) as other:  # a process without the secret does not accept it
        other.cookies.set(COOKIE, cookie)
        assert other.get("/v1/jobs").status_code == 401
