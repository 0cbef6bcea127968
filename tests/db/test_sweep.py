"""The sweep of stalled jobs on a real PostgreSQL (and a real Optuna study): which jobs get which task
sent again, once per stall period, one sweep at a time. The clock is the `now` argument."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import optuna
import pytest
from sqlalchemy import Engine, update

from soce.config import Settings
from soce.db import create_app_engine
from soce.db.engine import session_scope
from soce.db.migrate import upgrade
from soce.db.models import Job, Suite
from soce.db.optuna_storage import optuna_storage
from tests.service.conftest import redis_url  # noqa: F401  (a fixture, used by name)
from workers.sweep import sweep

STALL = 600.0


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    engine = create_app_engine(postgres_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", optuna_storage_url=f"sqlite:///{tmp_path / 'optuna.sqlite'}")


def _job(engine: Engine, state: str, idle: float, now: datetime, study: str | None = None) -> int:
    with session_scope(engine) as session:
        suite = Suite(name=f"s-{state}", spec={}, content_hash=uuid.uuid4().hex * 2)
        job = Job(name=state, suite=suite, recipe={}, state=state, study_name=study)
        job.updated_at = now - timedelta(seconds=idle)
        session.add(job)
        session.flush()
        return job.id


def _sent(engine: Engine, settings: Settings, now: datetime) -> list[tuple[str, list[int]]]:
    messages: list[tuple[str, list[int]]] = []
    sweep(engine, now, settings=settings, send=lambda t, a: messages.append((t, a)), stall_seconds=STALL)
    return messages


def test_stalled_jobs_get_the_task_of_their_state_once_per_stall_period(engine, settings) -> None:
    now = datetime.now(UTC)
    stalled = {s: _job(engine, s, 2 * STALL, now) for s in ("queued", "scoring", "analysing", "finalizing")}
    working = _job(engine, "scoring", STALL / 2, now)  # its row changed recently
    for state in ("done", "failed", "cancelled"):
        _job(engine, state, 10 * STALL, now)  # over: nothing to send
    sent = _sent(engine, settings, now)
    assert sorted(sent) == sorted(
        [
            ("soce.job.start", [stalled["queued"]]),
            ("soce.job.score", [stalled["scoring"]]),
            ("soce.job.analyse", [stalled["analysing"]]),
            ("soce.job.finalize", [stalled["finalizing"]]),
        ]
    )
    with session_scope(engine) as session:
        note = session.get(Job, stalled["scoring"]).progress["sweep"]
    assert note["count"] == 1 and note["sent"] == [f"soce.job.score({stalled['scoring']},)"]
    assert note["idle_seconds"] == pytest.approx(2 * STALL, abs=1)
    # the sweep touched the rows: the next sweeps wait a whole stall period before sending again
    assert _sent(engine, settings, now + timedelta(seconds=STALL / 2)) == []
    again = _sent(engine, settings, now + timedelta(seconds=STALL + 1))  # now the working one too
    assert sorted(job_id for _, (job_id,) in again) == sorted([*stalled.values(), working])
    with session_scope(engine) as session:
        assert session.get(Job, stalled["queued"]).progress["sweep"]["count"] == 2


def test_a_stalled_search_sends_its_running_trials_or_the_search_task(engine, settings) -> None:
    now = datetime.now(UTC)
    study = optuna.create_study(study_name="study-1", storage=optuna_storage(settings))
    with_trials = _job(engine, "searching", 2 * STALL, now, study="study-1")
    other = _job(engine, "searching", 0, now, study="study-1")
    done = study.ask()
    done.set_user_attr("job", with_trials)
    study.tell(done, 0.5)
    for owner in (with_trials, other, with_trials):
        study.ask().set_user_attr("job", owner)
    idle_study = _job(engine, "searching", 2 * STALL, now, study="study-1")  # none of its trials run
    unnamed = _job(engine, "searching", 2 * STALL, now)  # its search task never named the study
    missing = _job(engine, "searching", 2 * STALL, now, study="never-created")
    sent = _sent(engine, settings, now)
    assert sorted(sent) == sorted(
        [
            ("soce.job.trial", [with_trials, 1]),
            ("soce.job.trial", [with_trials, 3]),
            ("soce.job.search", [idle_study]),
            ("soce.job.search", [unnamed]),
            ("soce.job.search", [missing]),
        ]
    )


def test_two_sweeps_at_once_send_each_task_once(engine, settings) -> None:
    now = datetime.now(UTC)
    ids = [_job(engine, "queued", 2 * STALL, now) for _ in range(3)]
    results: list[list[tuple[str, list[int]]]] = []
    barrier = threading.Barrier(2)

    def one() -> None:
        barrier.wait()
        results.append(_sent(engine, settings, now))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(job_id for r in results for _, (job_id,) in r) == ids


def test_the_stall_period_is_a_minute_by_default(engine, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, visibility_timeout=3600)
    assert settings.stall_seconds() == 60  # not the visibility timeout: a lost task waits minutes, not hours
    assert Settings(data_dir=tmp_path, job_stall_seconds=120).stall_seconds() == 120
    now = datetime.now(UTC)
    young = _job(engine, "queued", 30, now)
    old = _job(engine, "queued", 90, now)
    messages: list[tuple[str, list[int]]] = []
    sweep(engine, now, settings=settings, send=lambda t, a: messages.append((t, a)))
    assert messages == [("soce.job.start", [old])] and young != old


def test_a_job_with_a_fresh_heartbeat_or_a_waiting_message_is_left_alone(engine, settings) -> None:
    now = datetime.now(UTC)
    beating, waiting, lost = (_job(engine, "scoring", 2 * STALL, now) for _ in range(3))
    with session_scope(engine) as session:  # a worker runs the first job's step and beats for it
        for job_id, beat in ((beating, 5), (lost, 2 * STALL)):  # the second one's worker died
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(
                    heartbeat_at=now - timedelta(seconds=beat), updated_at=now - timedelta(seconds=2 * STALL)
                )
            )
    messages: list[tuple[str, list[int]]] = []
    send = lambda t, a: messages.append((t, a))  # noqa: E731
    sweep(engine, now, settings=settings, send=send, stall_seconds=STALL, queued=lambda: {waiting})
    assert messages == [("soce.job.score", [lost])]
    assert sweep(engine, now, settings=settings, send=send, stall_seconds=STALL, queued=lambda: None) == []


def test_waiting_messages_are_read_from_the_broker(redis_url: str) -> None:  # noqa: F811
    import redis as redis_client
    from celery import Celery

    from workers.sweep import queued_jobs

    producer = Celery("t", broker=redis_url, set_as_current=False)
    producer.conf.task_routes = {"soce.job.*": {"queue": "gpu"}, "soce.schedules.*": {"queue": "cpu"}}
    producer.send_task("soce.job.trial", args=[7, 3])
    producer.send_task("soce.job.score", args=[9])
    producer.send_task("soce.schedules.tick", args=[])  # not a job's task
    assert queued_jobs(redis_url) == {7, 9}
    redis_client.Redis.from_url(redis_url).flushdb()
    assert queued_jobs(redis_url) == set()
    assert queued_jobs("redis://127.0.0.1:1/0") is None  # nothing listens there
