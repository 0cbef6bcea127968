"""Real services for the worker tests: PostgreSQL (app and Optuna databases), Redis, a Celery worker.

PostgreSQL on 127.0.0.1 with trust auth for user postgres (SOCE_TEST_POSTGRES_URL points elsewhere)
and Redis on 127.0.0.1:6379 (SOCE_TEST_REDIS_URL; database 14 is flushed) must run: .ci/run starts
them, DESIGN.md says how by hand. Without them the tests fail with a message; they never skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.engine import make_url

from soce.db import Candidate, Job, Suite, create_app_engine, session_scope
from soce.db.migrate import upgrade
from soce.schemas.suite import SuiteSpec, canonical_hash
from tests.db.conftest import ADMIN_URL, postgres_admin  # noqa: F401  (a fixture, used by name)

REDIS_URL = os.environ.get("SOCE_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
VISIBILITY_TIMEOUT = 60  # the lowest the settings allow: a killed worker's task comes back after it


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A Redis database of our own, empty at the start and at the end."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    cause = None
    try:
        client.ping()
    except redis.RedisError as e:
        cause = str(e).splitlines()[0]
    if cause is not None:
        pytest.fail(
            f"Redis is not reachable at {REDIS_URL} ({cause}). Start it with `redis-server --daemonize yes "
            '--bind 127.0.0.1 --port 6379 --save "" --appendonly no` (.ci/run does), '
            "or set SOCE_TEST_REDIS_URL",
            pytrace=False,
        )
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


def _new_database(admin: Engine, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return name


@pytest.fixture(scope="module")
def service_databases(postgres_admin: Engine) -> Iterator[tuple[str, str]]:  # noqa: F811
    """(app database URL, Optuna database URL): two new databases, the app one migrated; dropped after."""
    names = [
        _new_database(postgres_admin, "soce_test_app"),
        _new_database(postgres_admin, "soce_test_optuna"),
    ]
    urls = [make_url(ADMIN_URL).set(database=n).render_as_string(hide_password=False) for n in names]
    try:
        engine = create_app_engine(urls[0])
        upgrade(engine)
        engine.dispose()
        yield urls[0], urls[1]
    finally:
        from soce.db import dispose_engines

        dispose_engines()
        with postgres_admin.connect() as conn:
            for n in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)'))


class Worker:
    """`soce worker --queues gpu,cpu` as a subprocess in its own process group (so a kill takes it all)."""

    def __init__(
        self, env: dict[str, str], logs: Path, *, queues: str = "gpu,cpu", name: str = "test"
    ) -> None:
        self.env, self.logs, self.queues, self.name = env, logs, queues, name
        self.proc: subprocess.Popen | None = None
        self.started = 0

    def start(self) -> None:
        self.started += 1
        soce = shutil.which("soce", path=str(Path(sys.executable).parent)) or "soce"
        log = open(self.logs / f"{self.name}-{self.started}.log", "wb")  # noqa: SIM115 (open while it runs)
        self.proc = subprocess.Popen(
            [
                soce,
                "worker",
                "--queues",
                self.queues,
                "--concurrency",
                "1",
                "-n",
                f"{self.name}{self.started}@%h",
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes: no warm shutdown, no acknowledgement."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def log_tail(self, chars: int = 4000) -> str:
        path = self.logs / f"{self.name}-{self.started}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@pytest.fixture(scope="module")
def service_env(
    service_databases: tuple[str, str], redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The environment a worker of the service runs with."""
    app_url, optuna_url = service_databases
    env = dict(os.environ)
    env.update(
        SOCE_DATABASE_URL=app_url,
        OPTUNA_STORAGE_URL=optuna_url,
        SOCE_BROKER_URL=redis_url,
        SOCE_DATA_DIR=str(tmp_path_factory.mktemp("worker-data")),
        SOCE_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="module")
def worker(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    w = Worker(service_env, tmp_path_factory.mktemp("worker-logs"))
    w.start()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def producer(service_env: dict[str, str]):
    """A Celery app that sends tasks by name, as the API does."""
    from soce.config import Settings
    from workers.celery_app import make_app

    app = make_app(Settings(broker_url=service_env["SOCE_BROKER_URL"], visibility_timeout=VISIBILITY_TIMEOUT))
    yield app
    app.close()


def create_job(engine: Engine, zoo: Path, *, name: str, seed: int, n_trials: int = 3, **search: Any) -> int:
    """A queued job over the zoo's candidates, as the API writes it (recipe: the search settings)."""
    spec = SuiteSpec.from_file(zoo / "suite.yaml").model_dump(mode="json")
    digest = canonical_hash(spec)
    with session_scope(engine) as session:
        suite = session.scalar(select(Suite).where(Suite.content_hash == digest))
        if suite is None:
            suite = Suite(name=spec["name"], spec=spec, content_hash=digest)
            session.add(suite)
        candidates = []
        for folder in sorted((zoo / "candidates").iterdir()):
            row = session.scalar(select(Candidate).where(Candidate.path == str(folder)))
            candidates.append(row or Candidate(name=folder.name, path=str(folder)))
        recipe = {"sampler": "tpe", "n_trials": n_trials, "seed": seed, "bootstrap_iterations": 200, **search}
        job = Job(name=name, suite=suite, recipe=recipe, state="queued", candidates=candidates)
        session.add(job)
        session.flush()
        return job.id


def wait_for(predicate, *, timeout: float, what: str, worker: Worker | None = None, every: float = 1.0):
    """Poll until `predicate()` gives a true value; fail with the worker's log tail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = f"\nworker log:\n{worker.log_tail()}" if worker else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{tail}", pytrace=False)
        if worker is not None and not worker.alive():
            pytest.fail(f"the worker exited while waiting for {what}:\n{worker.log_tail()}", pytrace=False)
        time.sleep(every)
