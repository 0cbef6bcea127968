"""The API against its own OpenAPI document: schemathesis calls every operation with generated input.

It runs what `schemathesis run` runs (boundary values of every parameter, random valid and invalid
input, sequences of calls) against the real app in-process, as a read-write key, bounded by a few
examples per operation. Every response must have a documented status, content type, headers and a
body of the documented schema (times with their zone: `format: date-time` is RFC 3339), and none may
be a server error: the databases and the broker are up, so not even a 503. The database holds a
finished job (its report, trials and soup), a running and a failed one and a schedule, so that reads
by id also answer with full bodies, not only with 404.

Two more tests check the answers random input seldom reaches (creations, replays, conflicts, keys,
the size limit) and the 503s of an unreachable database, Optuna storage or broker.

Left out: nothing in the OpenAPI document. The dashboard's HTML pages and /static are not in it
(`include_in_schema=False`); tests/api/test_dashboard.py covers them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from schemathesis.engine import events, from_schema

from api.app import create_app
from api.schemas import SuitePublic
from soce.config import Settings
from soce.db import session_scope
from soce.db.models import Schedule, ScheduleRun
from tests.api.dashboard_rows import make_jobs
from tests.api.factories import SUITE

MAX_EXAMPLES = 30  # generated inputs per operation in each phase
MAX_EXAMPLES_UNAVAILABLE = 10  # valid inputs per operation with the database down
MAX_STEPS = 10  # calls in one generated sequence
CEILING_SECONDS = 240  # the run is stopped (and the test fails) if it ever takes this long
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)


@dataclass(frozen=True)
class Finding:
    """One failed check: the operation, the check, what was wrong and a request that shows it."""

    operation: str
    check: str
    message: str
    request: str

    def __str__(self) -> str:
        return f"{self.operation}: {self.check}: {self.message.strip()}\n    {self.request}"


@dataclass(frozen=True)
class Run:
    """What one schemathesis run found, how many requests it made, how long it took, and whether it
    was stopped at the ceiling."""

    findings: list[Finding]
    requests: int
    seconds: float
    stopped: bool


def _seed(app: FastAPI, settings: Settings, soup_dir: Path) -> None:
    """Rows for every read by id: jobs with a study and a soup, and a schedule with a run."""
    jobs = make_jobs(app.state.engine, settings, soup_dir)
    with session_scope(app.state.engine) as session:
        schedule = Schedule(
            name="nightly",
            cron="0 3 * * *",
            recipe_template={"suite_id": 1},
            candidate_source={"tag": "ft"},
            promotion_policy={},
            champion_soup_id=1,
            next_run_at=datetime(2030, 1, 1, 3, tzinfo=UTC),
        )
        session.add(schedule)
        session.flush()
        due = datetime(2029, 12, 31, 3, tzinfo=UTC)
        session.add(ScheduleRun(schedule_id=schedule.id, due_at=due, outcome="promoted", job_id=jobs.done))


def _run(app: FastAPI, headers: dict[str, str], *, unavailable: bool = False) -> Run:
    """One schemathesis run over every operation: its distinct failures and how long it took.

    `unavailable`: the app's database is down, so 503 is the one server error expected; only valid
    input is sent (invalid input is refused before the database is asked, as in the full run).
    """
    if unavailable:
        generation = {"max-examples": MAX_EXAMPLES_UNAVAILABLE, "mode": "positive"}
        phases = {"coverage": {"enabled": False}, "stateful": {"enabled": False}}
    else:
        generation = {"max-examples": MAX_EXAMPLES}
        phases = {"stateful": {"max-steps": MAX_STEPS}}
    server_errors = ["503"] if unavailable else []
    config = schemathesis.Config.from_dict(
        {
            "headers": headers,
            "seed": 0,  # the same inputs on every run, so a failure here is reproducible
            "cache": {"enabled": False},  # nothing written into the working tree
            "generation": {**generation, "database": "none"},
            "phases": phases,
            "checks": {
                "enabled": False,
                **{name: {"enabled": True} for name in CHECKS},
                "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", *server_errors]},
            },
        }
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    findings: dict[tuple[str, str, str], Finding] = {}
    requests, stopped = 0, False
    started = time.monotonic()
    stream = from_schema(schema).execute()
    for event in stream:
        if isinstance(event, events.FatalError):
            raise event.exception
        if isinstance(event, events.NonFatalError):  # the app raised: a server error that escaped
            message = f"{type(event.value).__name__}: {str(event.value).splitlines()[0]}"
            findings.setdefault((event.label, "error", message), Finding(event.label, "error", message, ""))
        elif isinstance(event, events.ScenarioFinished):
            requests += len(event.recorder.interactions)
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    if check.failure_info is None:
                        continue
                    failure = check.failure_info.failure
                    operation = failure.operation or event.recorder.label
                    key = (operation, check.name, failure.title)
                    if key not in findings:
                        case = event.recorder.cases[case_id].value
                        findings[key] = Finding(
                            operation, check.name, failure.message, case.as_curl_command()
                        )
        if not stopped and time.monotonic() - started > CEILING_SECONDS:
            stream.stop()
            stopped = True
    return Run(list(findings.values()), requests, time.monotonic() - started, stopped)


def test_every_operation_conforms_to_the_openapi_document(
    app: FastAPI, settings: Settings, writer: dict[str, str], tmp_path: Path
) -> None:
    # no worker runs here: a ping for them would wait its whole timeout on every call of /healthz
    app.state.worker_probe = list
    _seed(app, settings, tmp_path / "soup")
    run = _run(app, writer)
    print(f"schemathesis: {run.requests} requests in {run.seconds:.1f} s, {len(run.findings)} failures")
    assert not run.findings, "\n".join(map(str, run.findings))
    assert not run.stopped, f"stopped after {CEILING_SECONDS} s: lower MAX_EXAMPLES"


def test_answers_that_random_input_seldom_reaches_are_documented(
    app: FastAPI, client: TestClient, settings: Settings, keys: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    """Created and replayed suites and jobs, a schedule, a cancel, each conflict, a read-only key, a
    body over the size limit and a read without a key where reading is not public."""
    _seed(app, settings, tmp_path / "soup")
    document = app.openapi()
    schema = schemathesis.openapi.from_dict(document)
    writer, reader = keys["writer"], keys["reader"]

    def answered(method: str, path: str, response: httpx.Response, status: int) -> dict:
        assert response.status_code == status, response.text
        assert str(status) in document["paths"][path][method.lower()]["responses"], (method, path, status)
        schema[path][method].validate_response(response)
        return response.json()

    def created_suite(headers: dict[str, str]) -> httpx.Response:
        return client.post("/v1/suites", json={"spec": {**SUITE, "name": "other"}}, headers=headers)

    suite = answered("POST", "/v1/suites", created_suite(writer), 201)
    answered("POST", "/v1/suites", created_suite(writer), 200)
    answered("POST", "/v1/suites", created_suite(reader), 403)
    answered("POST", "/v1/suites", created_suite({}), 401)
    with TestClient(create_app(settings.model_copy(update={"max_request_bytes": 1024}))) as small:
        large = small.post("/v1/suites", json={"spec": {**SUITE, "name": "x" * 2048}}, headers=writer)
    answered("POST", "/v1/suites", large, 413)

    job = {"suite_id": suite["id"], "candidate_ids": [1, 2]}
    keyed = {**writer, "Idempotency-Key": "nightly-1"}
    created = answered("POST", "/v1/jobs", client.post("/v1/jobs", json=job, headers=keyed), 201)
    answered("POST", "/v1/jobs", client.post("/v1/jobs", json=job, headers=keyed), 200)
    other = {**job, "candidate_ids": [1, 3]}
    answered("POST", "/v1/jobs", client.post("/v1/jobs", json=other, headers=keyed), 409)
    cancel = f"/v1/jobs/{created['id']}/cancel"
    answered("POST", "/v1/jobs/{job_id}/cancel", client.post(cancel, headers=writer), 200)
    answered("POST", "/v1/jobs/{job_id}/cancel", client.post(cancel, headers=writer), 409)
    answered("GET", "/v1/jobs/{job_id}", client.get(f"/v1/jobs/{created['id']}"), 200)

    schedule = {
        "name": "weekly",
        "cron": "0 2 * * 1",
        "timezone": "Europe/Paris",
        "recipe_template": {"suite_id": suite["id"], "sampler": "grid"},
        "candidate_source": {"tag": "ft"},
        "promotion_policy": {"metric": "test_average", "min_improvement": 0.01},
    }
    made = answered("POST", "/v1/schedules", client.post("/v1/schedules", json=schedule, headers=writer), 201)
    answered("POST", "/v1/schedules", client.post("/v1/schedules", json=schedule, headers=writer), 409)
    patched = client.patch(f"/v1/schedules/{made['id']}", json={"enabled": False}, headers=writer)
    answered("PATCH", "/v1/schedules/{schedule_id}", patched, 200)

    app.state.settings = settings.model_copy(update={"dashboard_public_read": False})
    answered("GET", "/v1/jobs", client.get("/v1/jobs"), 401)


def test_with_a_database_or_the_broker_down_every_answer_is_documented(
    app: FastAPI, settings: Settings, writer: dict[str, str], tmp_path: Path
) -> None:
    """503 (not 500) with the documented body: from every operation that needs the app database while
    it is down, from a job's trials while Optuna's is, and from a new job while the broker is."""
    down = create_app(
        settings.model_copy(
            update={"database_url": "postgresql+psycopg://postgres@127.0.0.1:5432/soce_no_such_database"}
        )
    )
    down.state.worker_probe = list
    run = _run(down, writer, unavailable=True)
    print(f"schemathesis, database down: {run.requests} requests in {run.seconds:.1f} s")
    assert not run.findings, "\n".join(map(str, run.findings))

    _seed(app, settings, tmp_path / "soup")  # suite 1, candidates 1 to 3, job 1 with a study

    def unavailable(update: dict[str, str], method: str, path: str, url: str, **kwargs: object) -> None:
        broken = create_app(settings.model_copy(update=update))
        with TestClient(broken) as client:
            r = client.request(method, url, headers=writer, **kwargs)
        assert r.status_code == 503, r.text
        schemathesis.openapi.from_dict(broken.openapi())[path][method].validate_response(r)

    optuna_down = {"optuna_storage_url": "postgresql+psycopg://postgres@127.0.0.1:1/optuna"}
    unavailable(optuna_down, "GET", "/v1/jobs/{job_id}/trials", "/v1/jobs/1/trials")
    broker_down = {"broker_url": "redis://127.0.0.1:1/0"}
    job = {"suite_id": 1, "candidate_ids": [1, 2]}
    unavailable(broker_down, "POST", "/v1/jobs", "/v1/jobs", json=job)


def test_times_in_responses_carry_their_zone() -> None:
    """A naive time (UTC by the databases' convention) is shown as UTC, an aware one converted to it."""

    def shown(when: datetime) -> str:
        row = SuitePublic(id=1, name="mini", content_hash="d" * 64, spec={}, created_at=when)
        return row.model_dump(mode="json")["created_at"]

    assert shown(datetime(2025, 1, 31, 12)) == "2025-01-31T12:00:00Z"
    assert shown(datetime(2025, 1, 31, 14, tzinfo=timezone(timedelta(hours=2)))) == "2025-01-31T12:00:00Z"
