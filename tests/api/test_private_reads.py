"""SOCE_DASHBOARD_PUBLIC_READ=false closes the REST reads too: every GET under /v1/ needs an API key
(read-only or read-write) or a signed-in dashboard session; health and metrics stay open. With the
default (public reads) nothing needs a key."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.dashboard_session import COOKIE
from soce.config import Settings
from soce.db import revoke_api_key, session_scope
from tests.api.factories import SUITE


def _v1_reads(app: FastAPI) -> list[str]:
    """Every GET route under /v1/ in the OpenAPI document, with 1 for each path parameter."""
    paths = [p for p, operations in app.openapi()["paths"].items() if "get" in operations]
    return sorted(re.sub(r"\{[^}]+\}", "1", p) for p in paths if p.startswith("/v1/"))


@pytest.fixture
def private_app(settings: Settings) -> FastAPI:
    return create_app(settings.model_copy(update={"dashboard_public_read": False}))


@pytest.fixture
def private(private_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(private_app) as client:
        yield client


def test_every_v1_read_needs_a_key_or_a_session(private: TestClient, private_app: FastAPI, keys) -> None:
    reads = _v1_reads(private_app)
    assert {"/v1/jobs", "/v1/candidates", "/v1/soups/1", "/v1/suites", "/v1/schedules"} <= set(reads)
    for path in reads:
        r = private.get(path)
        assert r.status_code == 401, path
        assert "reading is not public" in r.json()["detail"] and r.headers["www-authenticate"] == "Bearer"
        bogus = private.get(path, headers={"Authorization": "Bearer soce_not-a-real-key"})
        assert bogus.status_code == 401 and bogus.json() == {"detail": "the API key is unknown or revoked"}
        for kind in ("reader", "writer"):
            assert private.get(path, headers=keys[kind]).status_code in (200, 404), (path, kind)


def test_a_signed_in_dashboard_session_reads(private: TestClient, keys) -> None:
    key = keys["reader"]["Authorization"].removeprefix("Bearer ")
    r = private.post("/signin", data={"key": key, "next": "/"}, follow_redirects=False)
    assert r.status_code == 303 and private.cookies.get(COOKIE)
    assert private.get("/v1/jobs").status_code == 200
    private.cookies.clear()
    private.cookies.set(COOKIE, "1.forged.0.deadbeef")
    assert private.get("/v1/jobs").status_code == 401


def test_a_revoked_key_no_longer_reads(private: TestClient, private_app: FastAPI, keys) -> None:
    assert private.get("/v1/suites", headers=keys["reader"]).status_code == 200
    with session_scope(private_app.state.engine) as session:
        revoke_api_key(session=session, name="reader")
    assert private.get("/v1/suites", headers=keys["reader"]).status_code == 401


def test_health_metrics_and_writes_are_as_before(private: TestClient, keys) -> None:
    assert private.get("/healthz").status_code in (200, 503)
    assert private.get("/metrics").status_code == 200
    r = private.post("/v1/suites", json={"spec": SUITE})
    assert r.status_code == 401 and "this endpoint writes" in r.json()["detail"]
    assert private.post("/v1/suites", json={"spec": SUITE}, headers=keys["reader"]).status_code == 403
    assert private.post("/v1/suites", json={"spec": SUITE}, headers=keys["writer"]).status_code == 201


def test_reads_are_open_by_default(client: TestClient, app: FastAPI) -> None:
    assert app.state.settings.dashboard_public_read
    for path in _v1_reads(app):
        assert client.get(path).status_code in (200, 404), path
