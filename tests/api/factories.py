"""Small helpers: registering what a test needs through the API itself, the messages sent, an Optuna
study, counting queries."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import optuna
import redis
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event

from soce.config import Settings

SUITE = {
    "name": "mini",
    "dev_split": "validation",
    "test_split": "test",
    "categories": [
        {"name": "arithmetic", "tasks": [{"name": "zoo_add", "metric": "exact_match,none"}]},
        {"name": "strings", "tasks": [{"name": "zoo_rev", "metric": "exact_match,none"}]},
    ],
}


def register(
    client: TestClient, headers: dict[str, str], paths: Sequence[Path], tags: Sequence[str] = ()
) -> list[dict]:
    r = client.post(
        "/v1/candidates", json={"paths": [str(p) for p in paths], "tags": list(tags)}, headers=headers
    )
    assert r.status_code == 201, r.text
    return r.json()


def make_suite(client: TestClient, headers: dict[str, str], spec: dict | None = None) -> dict:
    r = client.post("/v1/suites", json={"spec": spec or SUITE}, headers=headers)
    assert r.status_code in (200, 201), r.text
    return r.json()


def queued_messages(redis_db: redis.Redis, queue: str = "cpu") -> list[tuple[str, list]]:
    """(task name, args) of every message waiting in a Celery queue on Redis, in the order they were sent
    (kombu pushes on the left and workers pop on the right)."""
    out = []
    for raw in reversed(redis_db.lrange(queue, 0, -1)):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        out.append((message["headers"]["task"], args))
    return out


STUDY = "soce-tpe-0123456789abcdef"


def fill_study(settings: Settings) -> None:
    """Four trials in Optuna's database: three complete (values 0.2, 0.8, 0.5) and one pruned."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=STUDY, storage=settings.optuna_url(), direction="maximize")
    for value in (0.2, 0.8, 0.5):
        trial = study.ask()
        trial.suggest_float("u0", 0.0, 1.0)
        trial.suggest_int("bucket", 1, 4)
        trial.suggest_categorical("space", ["simplex", "layerwise"])
        trial.set_user_attr("category_scores", {"arithmetic": value, "strings": value / 2})
        study.tell(trial, value)
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)


@contextmanager
def counted(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements run on `engine` inside the block (a pool's pre-ping is not one)."""
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)
