"""Hostile input never makes the API fail: ids beyond the id columns, NUL characters, settings the
workers cannot honour, oversized bodies; errors name the field and never echo a large input back."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import text

from api.app import create_app
from api.deps import SessionDep
from soce.config import Settings
from tests.api.factories import make_suite, register

BAD_IDS = [2**31, 2**63, 0, -1]
SCHEDULE = {
    "name": "nightly",
    "cron": "0 3 * * *",
    "candidate_source": {"tag": "nightly"},
}


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """A client that shows a server error as its 500 response instead of raising it."""
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _id_routes(app: FastAPI) -> list[tuple[str, str, list[str]]]:
    """(method, path template, id parameters) of every route with an id in its path."""
    found = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if not isinstance(route, APIRoute):
            continue
        ids = [p.name for p in route.dependant.path_params if p.name.endswith("_id")]
        for method in sorted(context.methods or ()):
            if ids and method != "HEAD":
                found.append((method, context.path, ids))
    return found


def _url(template: str, values: dict[str, Any]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: str(values.get(m.group(1), "x")), template)


def _locs(response: Any) -> list[list[Any]]:
    return [issue["loc"] for issue in response.json()["detail"]]


def _messages(response: Any) -> str:
    return " ".join(issue["msg"] for issue in response.json()["detail"])


# --- ids -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", BAD_IDS)
def test_every_id_in_a_path_beyond_the_id_columns_is_404(
    app: FastAPI, client: TestClient, writer: dict[str, str], bad: int
) -> None:
    routes = _id_routes(app)
    assert len(routes) >= 14, routes  # the enumeration sees the routers' routes, dashboard included
    wrong = []
    for method, template, ids in routes:
        for name in ids:
            url = _url(template, {n: (bad if n == name else 1) for n in ids})
            r = client.request(method, url, headers=writer)
            if r.status_code != 404 or str(bad) not in r.json()["detail"]:
                wrong.append(f"{method} {url}: {r.status_code} {r.text[:200]}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("offset", [2**31, 2**63])
@pytest.mark.parametrize("url", ["/v1/jobs", "/v1/jobs/1/trials"])
def test_an_offset_beyond_any_row_is_refused(client: TestClient, url: str, offset: int) -> None:
    r = client.get(url, params={"offset": offset})
    assert r.status_code == 422, r.text
    assert _locs(r) == [["query", "offset"]]


@pytest.mark.parametrize(
    "body, loc",
    [
        ({"suite_id": 2**31, "candidate_ids": [1, 2]}, ["body", "suite_id"]),
        ({"suite_id": 1, "candidate_ids": [1, 2**63]}, ["body", "candidate_ids", 1]),
        ({"suite_id": 0, "tag": "t"}, ["body", "suite_id"]),
    ],
)
def test_an_id_beyond_the_id_columns_in_a_body_is_422(
    client: TestClient, writer: dict[str, str], body: dict, loc: list
) -> None:
    r = client.post("/v1/jobs", json=body, headers=writer)
    assert r.status_code == 422, r.text
    assert _locs(r) == [loc]


# --- NUL characters --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url, params, loc",
    [
        ("/v1/candidates", {"tag": "a\x00b"}, ["query", "tag"]),
        ("/v1/jobs", {"name": "a\x00b"}, ["query", "name"]),
    ],
)
def test_nul_in_a_filter_is_422_naming_it(client: TestClient, url: str, params: dict, loc: list) -> None:
    r = client.get(url, params=params)
    assert r.status_code == 422, r.text
    assert _locs(r) == [loc] and "NUL" in _messages(r)


@pytest.mark.parametrize(
    "url, body, loc, names",
    [
        ("/v1/candidates", {"paths": ["/srv/a\x00b"]}, ["body", "paths", 0], ""),
        ("/v1/candidates", {"paths": ["/srv/a"], "tags": ["ok", "t\x00"]}, ["body", "tags", 1], ""),
        ("/v1/jobs", {"suite_id": 1, "candidate_ids": [1, 2], "name": "a\x00"}, ["body", "name"], ""),
        ("/v1/jobs", {"suite_id": 1, "tag": "a\x00"}, ["body", "tag"], ""),
        ("/v1/suites", {"path": "/srv/suite\x00.yml"}, ["body", "path"], ""),
        (
            "/v1/suites",
            {"spec": {"name": "s", "categories": [{"name": "c\x00", "tasks": [{"name": "t"}]}]}},
            ["body", "spec"],
            "categories.0.name",
        ),
        ("/v1/schedules", {**SCHEDULE, "cron": "0 3 * * *\x00"}, ["body", "cron"], ""),
        ("/v1/schedules", {**SCHEDULE, "timezone": "UTC\x00"}, ["body", "timezone"], ""),
        ("/v1/schedules", {**SCHEDULE, "webhook_url": "https://x/\x00"}, ["body", "webhook_url"], ""),
        (
            "/v1/schedules",
            {**SCHEDULE, "candidate_source": {"glob": "/srv/\x00*"}},
            ["body", "candidate_source", "glob"],
            "",
        ),
        (
            "/v1/schedules",
            {**SCHEDULE, "candidate_source": {"tag": "\x00"}},
            ["body", "candidate_source", "tag"],
            "",
        ),
        ("/v1/schedules", {**SCHEDULE, "recipe_template": {"suite_id": 1, "name": "\x00"}}, None, "name"),
    ],
)
def test_nul_in_a_body_is_422_naming_the_field(
    client: TestClient, writer: dict[str, str], url: str, body: dict, loc: list | None, names: str
) -> None:
    body = {"recipe_template": {"suite_id": 1}, **body} if url == "/v1/schedules" else body
    r = client.post(url, json=body, headers=writer)
    assert r.status_code == 422, r.text
    assert loc is None or loc in _locs(r), r.text
    assert "NUL" in _messages(r) and names in _messages(r), r.text


def test_a_value_the_database_refuses_is_422_not_500(app: FastAPI, client: TestClient) -> None:
    """The last line of defence, for a value that a missing bound lets through to PostgreSQL."""

    @app.get("/v1/test-unstorable")
    def unstorable(session: SessionDep) -> None:
        session.execute(text("SELECT CAST(:v AS integer)"), {"v": 2**40})

    r = client.get("/v1/test-unstorable")
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["type"] == "unstorable" and "out of range" in _messages(r)


# --- the recipe's bounds ---------------------------------------------------------------------
RECIPE_BOUNDS = [
    ("seed", -1),
    ("seed", 2**33),
    ("bootstrap_iterations", 10**12),
    ("n_trials", 10**9),
    ("layer_groups", 10**9),
    ("name", "x" * 100_000),
]


@pytest.mark.parametrize("field, value", RECIPE_BOUNDS)
def test_a_job_beyond_the_recipe_bounds_is_422(
    client: TestClient, writer: dict[str, str], field: str, value: Any
) -> None:
    body = {"suite_id": 1, "candidate_ids": [1, 2], "space": "layerwise", field: value}
    r = client.post("/v1/jobs", json=body, headers=writer)
    assert r.status_code == 422, r.text
    assert _locs(r) == [["body", field]]
    assert len(r.content) < 2000  # the 100 kB name is not echoed


@pytest.mark.parametrize("field, value", RECIPE_BOUNDS)
def test_a_schedule_beyond_the_recipe_bounds_is_422(
    client: TestClient, writer: dict[str, str], field: str, value: Any
) -> None:
    body = {**SCHEDULE, "recipe_template": {"suite_id": 1, "space": "layerwise", field: value}}
    r = client.post("/v1/schedules", json=body, headers=writer)
    assert r.status_code == 422, r.text
    assert _locs(r) == [["body", "recipe_template"]] and field in _messages(r)
    assert len(r.content) < 2000


def test_the_recipe_bounds_themselves_are_accepted(
    client: TestClient, writer: dict[str, str], make_checkpoints: Any
) -> None:
    suite = make_suite(client, writer)
    register(client, writer, make_checkpoints(2), tags=["edge"])
    largest = {
        "seed": 2**32 - 1,
        "bootstrap_iterations": 10_000,
        "n_trials": 10_000,
        "layer_groups": 128,
        "space": "layerwise",
        "name": "x" * 255,
    }
    r = client.post("/v1/jobs", json={"suite_id": suite["id"], "tag": "edge", **largest}, headers=writer)
    assert r.status_code == 201, r.text
    job = client.get(f"/v1/jobs/{r.json()['id']}").json()
    assert job["name"] == largest["name"]
    assert all(job["recipe"][k] == v for k, v in largest.items())
    body = {**SCHEDULE, "recipe_template": {"suite_id": suite["id"], **largest}}
    r = client.post("/v1/schedules", json=body, headers=writer)
    assert r.status_code == 201, r.text


# --- bodies ----------------------------------------------------------------------------------
def _limited_app(settings: Settings, limit: int) -> FastAPI:
    return create_app(settings.model_copy(update={"max_request_bytes": limit}))


def _assert_too_large(r: Any, limit: int) -> None:
    assert r.status_code == 413, r.text
    detail = r.json()["detail"]
    assert str(limit) in detail and "SOCE_MAX_REQUEST_BYTES" in detail


def test_a_body_over_the_limit_is_413_by_its_content_length(
    settings: Settings, writer: dict[str, str]
) -> None:
    with TestClient(_limited_app(settings, 4096)) as client:
        body = json.dumps({"spec": {"name": "x" * 5000}})
        r = client.post("/v1/suites", content=body, headers={**writer, "Content-Type": "application/json"})
        _assert_too_large(r, 4096)
        small = client.post("/v1/suites", json={"path": "/srv/none.yml"}, headers=writer)
        assert small.status_code == 422  # under the limit: read and checked as before


def test_a_chunked_body_over_the_limit_is_413(settings: Settings, writer: dict[str, str]) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"spec": {"name": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}}'

    with TestClient(_limited_app(settings, 4096)) as client:
        headers = {**writer, "Content-Type": "application/json"}
        r = client.post("/v1/suites", content=chunks(), headers=headers)
        assert "content-length" not in {k.lower() for k in r.request.headers}
        _assert_too_large(r, 4096)


def test_the_default_limit_refuses_a_large_body(client: TestClient, writer: dict[str, str]) -> None:
    body = b'{"paths": ["' + b"x" * (1 << 20) + b'"]}'
    r = client.post("/v1/candidates", content=body, headers={**writer, "Content-Type": "application/json"})
    _assert_too_large(r, 1 << 20)


def test_a_chunked_body_is_not_read_past_the_limit(settings: Settings) -> None:
    """Straight through ASGI: a client that would send chunks forever is cut off at the limit."""
    app = _limited_app(settings, 64 * 1024)
    reads = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"x" * 4096, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/suites",
        "raw_path": b"/v1/suites",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    # in a thread of its own: an earlier test may leave an event loop running in this one
    runner = threading.Thread(target=lambda: asyncio.run(app(scope, receive, send)))
    runner.start()
    runner.join(timeout=60)
    assert sent[0]["status"] == 413
    assert reads == 64 * 1024 // 4096 + 1  # the read that passed the limit was the last


@pytest.mark.parametrize(
    "body",
    [
        {"suite_id": 1, "candidate_ids": [1, 2], "name": "y" * 500_000},
        {"suite_id": 1, "candidate_ids": ["y" * 10] * 40_000},
        {"suite_id": 1, "candidate_ids": [1, 2], "y" * 500_000: 1},
        [{"suite_id": "y" * 1000}] * 500,
    ],
    ids=["long-name", "many-bad-items", "long-key", "wrong-type"],
)
def test_a_422_for_a_large_body_is_small(client: TestClient, writer: dict[str, str], body: Any) -> None:
    content = json.dumps(body).encode()
    assert 400_000 < len(content) < 1 << 20
    r = client.post("/v1/jobs", content=content, headers={**writer, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text[:300]
    assert len(r.content) < 5000, len(r.content)
    assert all(issue["loc"] for issue in r.json()["detail"] if issue["type"] != "too_many_errors")


def test_a_422_for_many_bad_items_says_how_many_are_left_out(
    client: TestClient, writer: dict[str, str]
) -> None:
    r = client.post("/v1/jobs", json={"suite_id": 1, "candidate_ids": ["a"] * 100}, headers=writer)
    assert r.status_code == 422
    issues = r.json()["detail"]
    assert len(issues) == 21 and issues[-1] == {
        "loc": [],
        "msg": "80 more problems not shown",
        "type": "too_many_errors",
    }
    assert issues[0]["loc"] == ["body", "candidate_ids", 0] and issues[0]["input"] == "a"


# --- server timing ---------------------------------------------------------------------------
def test_every_response_says_the_server_time(client: TestClient, writer: dict[str, str]) -> None:
    responses = [
        client.get("/v1/jobs"),
        client.get("/v1/jobs/12345"),
        client.get("/v1/jobs", params={"limit": 0}),
        client.get("/static/nothing-here.css"),
        client.post("/v1/candidates", content=b"x" * ((1 << 20) + 1), headers=writer),
    ]
    assert [r.status_code for r in responses] == [200, 404, 422, 404, 413]
    for r in responses:
        assert re.fullmatch(r"app;dur=\d+\.\d\d", r.headers["server-timing"]), r.headers


def test_at_most_the_limit_of_requests_are_in_the_app_at_once() -> None:
    """The concurrency limit admits `limit` requests at a time; the rest wait in arrival order."""
    from api.middleware import ConcurrencyLimit

    inside, most, order = 0, 0, []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        await asyncio.sleep(0.01)
        order.append(scope["path"])
        inside -= 1

    limited = ConcurrencyLimit(app, limit=3)

    async def many() -> None:
        await asyncio.gather(*(limited({"type": "http", "path": f"/{i}"}, None, None) for i in range(20)))

    runner = threading.Thread(target=lambda: asyncio.run(many()))
    runner.start()
    runner.join(timeout=60)
    assert most == 3 and len(order) == 20
