"""The cpu queue's candidate hashing against a real app database, on PostgreSQL and on SQLite."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from soce.checkpoints import Checkpoint, DigestCache, checkpoint_hash
from soce.db import Candidate, create_app_engine, session_scope
from soce.db.migrate import upgrade
from tests.db.conftest import database_url, postgres_admin, postgres_url  # noqa: F401  (fixtures)
from workers.candidates import hash_candidate


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:  # noqa: F811  (the fixture above, by name)
    engine = create_app_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def registered(engine: Engine, path: Path, **fields: str) -> int:
    """A candidate row as registration leaves it: no hash, no error (unless given)."""
    with session_scope(engine) as session:
        row = Candidate(name=path.name, path=str(path), **fields)
        session.add(row)
        session.flush()
        return row.id


def stored(engine: Engine, candidate_id: int) -> tuple[str | None, str | None]:
    with session_scope(engine) as session:
        row = session.get(Candidate, candidate_id)
        return row.content_hash, row.error


def test_hash_is_stored_once(engine: Engine, make_checkpoints) -> None:
    path = make_checkpoints(1)[0]
    candidate_id = registered(engine, path)
    with Checkpoint.open(path) as ckpt:
        expected = checkpoint_hash(ckpt, DigestCache(None))
    assert hash_candidate(engine, candidate_id) == expected  # the settings' digest cache
    assert stored(engine, candidate_id) == (expected, None)

    shutil.rmtree(path)  # a message delivered again finds the hash and reads nothing
    assert hash_candidate(engine, candidate_id, cache=DigestCache(None)) == expected
    assert stored(engine, candidate_id) == (expected, None)


def test_a_hash_stored_meanwhile_is_kept(engine: Engine, make_checkpoints) -> None:
    path = make_checkpoints(1)[0]
    candidate_id = registered(engine, path, content_hash="f" * 64)  # the score step was first
    assert hash_candidate(engine, candidate_id, cache=DigestCache(None)) == "f" * 64
    assert stored(engine, candidate_id) == ("f" * 64, None)


def test_an_unreadable_folder_is_recorded_on_the_row(engine: Engine, make_checkpoints) -> None:
    gone, corrupt = make_checkpoints(2)
    gone_id, corrupt_id = registered(engine, gone), registered(engine, corrupt)
    shutil.rmtree(gone)
    weights = next(corrupt.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # truncated

    assert hash_candidate(engine, gone_id, cache=DigestCache(None)) is None
    digest, error = stored(engine, gone_id)
    assert digest is None and str(gone) in error and "no such file or folder" in error
    assert hash_candidate(engine, corrupt_id, cache=DigestCache(None)) is None
    digest, error = stored(engine, corrupt_id)
    assert digest is None and weights.name in error


def test_an_unknown_candidate_is_nothing_to_hash(engine: Engine) -> None:
    assert hash_candidate(engine, 12345, cache=DigestCache(None)) is None


def test_the_celery_task_runs_on_the_cpu_queue(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, make_checkpoints
) -> None:
    from soce.config import get_settings
    from soce.db import dispose_engines, get_engine
    from workers.celery_app import app
    from workers.tasks import hash_candidate as task

    assert task.name == "soce.candidates.hash" and task.name in app.tasks
    assert app.amqp.router.route({}, task.name)["queue"].name == "cpu"
    monkeypatch.setenv("SOCE_DATABASE_URL", f"sqlite:///{tmp_path / 'app.sqlite'}")
    get_settings.cache_clear()
    try:
        engine = get_engine()  # embedded SQLite: migrated on first use
        path = make_checkpoints(1)[0]
        candidate_id = registered(engine, path)
        digest = task.apply(args=[candidate_id]).get()
        assert digest is not None and stored(engine, candidate_id) == (digest, None)
    finally:
        dispose_engines()
        get_settings.cache_clear()
