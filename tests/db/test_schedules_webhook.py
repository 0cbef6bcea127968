"""A schedule run's webhook against a real local HTTP server and a real PostgreSQL: one POST per try,
which answers are tried again (5xx, timeouts, refused connections) and which are final (4xx, redirects),
Celery's own retries of the `schedules_notify` task (run eagerly, no broker) and what the run records."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from celery.exceptions import Retry
from sqlalchemy import Engine

from soce.config import get_settings
from soce.db import create_app_engine, dispose_engines
from soce.db.engine import session_scope
from soce.db.migrate import upgrade
from soce.db.models import Schedule, ScheduleRun
from workers.schedules import notify, notify_with_retries, post_summary

DELAYS = [0.01, 0.02]  # webhook_retry_seconds of these tests: two retries, three tries in all


class _Hook(BaseHTTPRequestHandler):
    """Answers each POST with the next of `answers` (the last one repeats) and keeps the bodies."""

    answers: ClassVar[list[int]] = [204]
    bodies: ClassVar[list[dict]] = []
    pause = 0.0  # seconds to wait before answering

    def do_POST(self) -> None:
        type(self).bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        answers = type(self).answers
        status = answers.pop(0) if len(answers) > 1 else answers[0]
        time.sleep(type(self).pause)
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", "https://elsewhere.example/hook")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook_url() -> Iterator[str]:
    _Hook.answers, _Hook.bodies, _Hook.pause = [204], [], 0.0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()
    server.server_close()


@pytest.fixture
def closed_url() -> str:
    """A local port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/hook"


@pytest.fixture
def engine(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """The test database, also the one the Celery tasks read through the settings."""
    engine = create_app_engine(postgres_url)
    upgrade(engine)
    monkeypatch.setenv("SOCE_DATABASE_URL", postgres_url)
    monkeypatch.setenv("SOCE_WEBHOOK_RETRY_SECONDS", json.dumps(DELAYS))
    get_settings.cache_clear()
    yield engine
    dispose_engines()
    monkeypatch.undo()
    get_settings.cache_clear()
    engine.dispose()


def _ended_run(engine: Engine, url: str | None) -> int:
    """A schedule with webhook `url` and one run that ended (skipped: no new candidates)."""
    with session_scope(engine) as session:
        schedule = Schedule(
            name="nightly",
            cron="0 2 * * *",
            recipe_template={"suite_id": 1},
            candidate_source={"tag": "nightly"},
            promotion_policy={},
            webhook_url=url,
        )
        session.add(schedule)
        session.flush()
        run = ScheduleRun(
            schedule_id=schedule.id,
            due_at=datetime(2026, 11, 22, 2, 0, tzinfo=UTC),
            outcome="skipped",
            details={"candidates": [], "new_candidates": [], "reason": "no new candidates"},
            finished_at=datetime(2026, 11, 22, 2, 0, tzinfo=UTC),
        )
        session.add(run)
        session.flush()
        return run.id


def _recorded(engine: Engine, run_id: int) -> tuple[dict, str | None]:
    """The run's webhook record and outcome."""
    with session_scope(engine) as session:
        run = session.get(ScheduleRun, run_id)
        assert run is not None
        return dict(run.details.get("webhook") or {}), run.outcome


# --- one try -------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [200, 202, 204])
def test_a_2xx_answer_delivers(hook_url: str, status: int) -> None:
    _Hook.answers = [status]
    attempt = post_summary(hook_url, {"run_id": 7})
    assert (attempt.delivered, attempt.transient, attempt.status, attempt.error) == (
        True,
        False,
        status,
        None,
    )
    assert _Hook.bodies == [{"run_id": 7}]


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_5xx_answer_is_transient(hook_url: str, status: int) -> None:
    _Hook.answers = [status]
    attempt = post_summary(hook_url, {})
    assert (attempt.delivered, attempt.transient, attempt.status) == (False, True, status)
    assert attempt.error is not None and str(status) in attempt.error


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
def test_a_4xx_answer_is_final(hook_url: str, status: int) -> None:
    _Hook.answers = [status]
    attempt = post_summary(hook_url, {})
    assert (attempt.delivered, attempt.transient, attempt.status) == (False, False, status)
    assert attempt.error is not None and str(status) in attempt.error


def test_a_redirect_is_final_and_not_followed(hook_url: str) -> None:
    _Hook.answers = [301]
    attempt = post_summary(hook_url, {})
    assert (attempt.delivered, attempt.transient, attempt.status) == (False, False, 301)
    assert attempt.error is not None and "https://elsewhere.example/hook" in attempt.error
    assert len(_Hook.bodies) == 1


def test_a_refused_connection_and_a_timeout_are_transient(hook_url: str, closed_url: str) -> None:
    refused = post_summary(closed_url, {})
    assert (refused.delivered, refused.transient, refused.status) == (False, True, None)
    assert refused.error is not None and "ConnectError" in refused.error
    _Hook.pause = 1.0
    slow = post_summary(hook_url, {}, timeout=0.2)
    assert (slow.delivered, slow.transient, slow.status) == (False, True, None)
    assert slow.error is not None and "Timeout" in slow.error


def test_a_url_no_try_can_reach_is_final() -> None:
    attempt = post_summary("ftp://127.0.0.1/hook", {})
    assert (attempt.delivered, attempt.transient, attempt.status) == (False, False, None)


# --- what a run records --------------------------------------------------------------------------
def test_each_try_is_recorded_on_the_run(engine: Engine, hook_url: str) -> None:
    run_id = _ended_run(engine, hook_url)
    _Hook.answers = [503, 204]
    first = notify(engine, run_id, retries_left=True)
    assert first is not None and first.transient
    record, outcome = _recorded(engine, run_id)
    assert (record["outcome"], record["attempts"], record["status"]) == ("retrying", 1, 503)
    second = notify(engine, run_id, retries_left=True)
    assert second is not None and second.delivered
    record, outcome = _recorded(engine, run_id)
    assert (record["outcome"], record["attempts"], record["status"], record["error"]) == (
        "delivered",
        2,
        204,
        None,
    )
    assert outcome == "skipped"  # the run's own outcome is the schedule's business, not the webhook's
    # every try sends the same summary, without the webhook record
    assert _Hook.bodies[0] == _Hook.bodies[1]
    assert _Hook.bodies[0]["details"] == {
        "candidates": [],
        "new_candidates": [],
        "reason": "no new candidates",
    }


def test_a_transient_failure_on_the_last_try_is_recorded_as_failed(engine: Engine, hook_url: str) -> None:
    run_id = _ended_run(engine, hook_url)
    _Hook.answers = [500]
    attempt = notify(engine, run_id, retries_left=False)
    assert attempt is not None and attempt.transient
    record, _ = _recorded(engine, run_id)
    assert (record["outcome"], record["attempts"], record["status"]) == ("failed", 1, 500)


def test_no_webhook_is_nothing_to_send(engine: Engine) -> None:
    run_id = _ended_run(engine, None)
    assert notify(engine, run_id) is None
    assert notify(engine, run_id + 1000) is None  # no such run
    assert _recorded(engine, run_id)[0] == {}


def test_in_process_retries_stop_at_a_final_answer(engine: Engine, hook_url: str) -> None:
    run_id = _ended_run(engine, hook_url)
    _Hook.answers = [500, 404, 204]
    assert notify_with_retries(engine, run_id, delays=(0.01, 0.01, 0.01)) is False
    assert len(_Hook.bodies) == 2  # 500 is tried again, 404 is not
    record, _ = _recorded(engine, run_id)
    assert (record["outcome"], record["attempts"], record["status"]) == ("failed", 2, 404)


# --- the Celery task -----------------------------------------------------------------------------
def test_task_retries_a_5xx_answer_then_delivers(engine: Engine, hook_url: str) -> None:
    from workers.tasks import schedules_notify

    run_id = _ended_run(engine, hook_url)
    _Hook.answers = [500, 200]
    result = schedules_notify.apply(args=[run_id])
    assert result.successful() and result.get() is True
    assert len(_Hook.bodies) == 2
    record, _ = _recorded(engine, run_id)
    assert (record["outcome"], record["attempts"], record["status"]) == ("delivered", 2, 200)


def test_task_takes_a_4xx_answer_as_final(engine: Engine, hook_url: str) -> None:
    from workers.tasks import schedules_notify

    run_id = _ended_run(engine, hook_url)
    _Hook.answers = [404, 200]
    result = schedules_notify.apply(args=[run_id])
    assert result.successful() and result.get() is False
    assert len(_Hook.bodies) == 1
    record, _ = _recorded(engine, run_id)
    assert (record["outcome"], record["attempts"], record["status"]) == ("failed", 1, 404)
    assert "404" in record["error"]


def test_task_gives_up_after_the_configured_retries(engine: Engine, closed_url: str) -> None:
    from workers.tasks import schedules_notify

    run_id = _ended_run(engine, closed_url)
    result = schedules_notify.apply(args=[run_id])
    assert result.successful() and result.get() is False
    record, _ = _recorded(engine, run_id)
    assert (record["outcome"], record["attempts"]) == ("failed", len(DELAYS) + 1)
    assert "ConnectError" in record["error"]


def _run_as_try(run_id: int, tries: int) -> bool:
    """The task's body run as an eager call that Celery already tried `tries` times."""
    from workers.tasks import schedules_notify

    schedules_notify.push_request(
        id=f"notify-{run_id}-{tries}",
        args=[run_id],
        kwargs={},
        retries=tries,
        is_eager=True,
        called_directly=False,
    )
    try:
        return schedules_notify.run(run_id)
    finally:
        schedules_notify.pop_request()


def test_task_waits_the_configured_delays_between_tries(engine: Engine, hook_url: str) -> None:
    """Retry n is scheduled `webhook_retry_seconds[n]` after try n + 1 (eager runs do not wait)."""
    run_id = _ended_run(engine, hook_url)
    _Hook.answers = [503]
    for tries, delay in enumerate(DELAYS):
        with pytest.raises(Retry) as retry:
            _run_as_try(run_id, tries)
        assert retry.value.when == delay
    assert _run_as_try(run_id, len(DELAYS)) is False  # the last try: no retry left
    record, _ = _recorded(engine, run_id)
    assert (record["outcome"], record["attempts"], record["status"]) == ("failed", len(DELAYS) + 1, 503)
