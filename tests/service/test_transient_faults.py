"""Errors a retry can cure do not fail a job: its queries killed mid-search, the job still finishes with
exactly its trials, none left running (the job's tasks run in this process, on PostgreSQL and Redis)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from soce.config import Settings
from soce.db import Job, create_app_engine, session_scope
from soce.errors import DatabaseError, TransientError, is_transient
from soce.flow import JobState, TaskName
from tests.service.conftest import create_job
from workers.flow import run_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def settings(service_databases, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    app_url, optuna_url = service_databases
    return Settings(
        database_url=app_url,
        optuna_storage_url=optuna_url,
        broker_url=redis_url,
        data_dir=tmp_path_factory.mktemp("fault-data"),
    )


class Killer(threading.Thread):
    """Terminates every other connection to the job's two databases, `times` times, `every` seconds apart
    (`pg_terminate_backend`, as an operator or a failover would), once the job is searching."""

    def __init__(self, settings: Settings, job_id: int, *, times: int = 8, every: float = 0.4) -> None:
        super().__init__(daemon=True)
        self.settings, self.job_id, self.times, self.every = settings, job_id, times, every
        self.killed = 0

    def run(self) -> None:
        app = make_url(self.settings.app_database_url())
        names = [app.database, make_url(self.settings.optuna_url()).database]
        admin = create_engine(app.set(database="postgres"), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:  # until the search has begun
                    if self.searching():
                        break
                    time.sleep(0.1)
                terminate = text(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity"
                    " WHERE datname = ANY(:names) AND pid <> pg_backend_pid()) t WHERE done"
                )
                for _ in range(self.times):
                    self.killed += conn.execute(terminate, {"names": names}).scalar_one()
                    time.sleep(self.every)
        finally:
            admin.dispose()

    def searching(self) -> bool:
        engine = create_engine(self.settings.app_database_url())
        try:
            with engine.connect() as conn:
                state = conn.execute(text("SELECT state FROM jobs WHERE id = :id"), {"id": self.job_id})
                return state.scalar_one_or_none() == JobState.SEARCHING
        finally:
            engine.dispose()


def test_killed_queries_are_retried_and_the_job_keeps_exactly_its_trials(tiny_zoo: Path, settings: Settings):
    engine = create_app_engine(settings.app_database_url())
    job_id = create_job(engine, tiny_zoo, name="killed-queries", seed=0, n_trials=6, parallel_trials=2)
    killer = Killer(settings, job_id)
    killer.start()
    pending = [(TaskName.START, [job_id])]
    while pending:
        task, args = pending.pop(0)
        pending += [(m.task, list(m.args)) for m in run_task(task, args, settings=settings, engine=engine)]
    killer.join(timeout=60)
    assert killer.killed > 0  # connections of the search were terminated while it ran
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job.state == JobState.DONE, job.error
        study_name = job.study_name
    trials = optuna.load_study(study_name=study_name, storage=settings.optuna_url()).trials
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 6 and "RUNNING" not in states and "WAITING" not in states
    engine.dispose()


def test_what_counts_as_transient():
    from sqlalchemy.exc import IntegrityError, OperationalError

    lost = OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
    assert is_transient(lost) and is_transient(TransientError("x"))
    try:
        raise DatabaseError("database x: lost") from lost
    except DatabaseError as wrapped:
        assert is_transient(wrapped)  # through the chain of causes
    assert not is_transient(IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not is_transient(ValueError("a bad recipe"))
