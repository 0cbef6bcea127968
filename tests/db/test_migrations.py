"""Migrations run up and down on SQLite, match the models, keep their own version table; embedded
databases migrate themselves; crud is idempotent and session_scope owns the transaction."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from soce.db import Base, Score, add_scores, create_app_engine, get_engine, get_scores, session_scope
from soce.db.migrate import HEAD, VERSION_TABLE, alembic_config, current_revision, downgrade, upgrade
from soce.errors import DatabaseError


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = create_app_engine(f"sqlite:///{tmp_path / 'app.sqlite'}")
    yield engine
    engine.dispose()


def score(key: str, value: float = 0.5) -> Score:
    fields = {"checkpoint_hash": "c" * 64, "task_spec_hash": "t" * 64, "evaluator": "lm_eval"}
    fields |= {"evaluator_version": "1", "limit": None, "num_fewshot": 0, "seed": 1234, "task": "t"}
    return Score(key=key, split="validation", metric="acc,none", value=value, stderr=0.1, n=10, **fields)


def test_upgrade_and_downgrade(engine: Engine) -> None:
    assert current_revision(engine) is None
    upgrade(engine)
    tables = set(inspect(engine).get_table_names())
    assert tables == set(Base.metadata.tables) | {VERSION_TABLE}  # never Optuna's `alembic_version`
    assert current_revision(engine) == HEAD
    downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) == {VERSION_TABLE}
    assert current_revision(engine) is None
    upgrade(engine)
    assert current_revision(engine) == HEAD


def test_head_constant_is_the_newest_revision(engine: Engine) -> None:
    assert ScriptDirectory.from_config(alembic_config(engine)).get_current_head() == HEAD


def test_migrations_match_the_models(engine: Engine) -> None:
    upgrade(engine)
    with engine.connect() as conn:
        opts = {"compare_type": True, "version_table": VERSION_TABLE}
        diff = compare_metadata(MigrationContext.configure(conn, opts=opts), Base.metadata)
    assert diff == []


def test_embedded_database_migrates_itself_on_first_use(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'embedded.sqlite'}"
    engine = get_engine(url)
    assert current_revision(engine) == HEAD
    assert get_engine(url) is engine


def test_scores_round_trip_and_first_write_wins(engine: Engine) -> None:
    upgrade(engine)
    with session_scope(engine) as session:
        add_scores(session=session, scores=[score("k1", 0.5), score("k2", 0.7)])
    with session_scope(engine) as session:
        add_scores(session=session, scores=[score("k1", 0.9)])  # say, a second worker
        found = get_scores(session=session, keys=["k1", "k2", "k3"])
    assert {k: s.value for k, s in found.items()} == {"k1": 0.5, "k2": 0.7}
    assert found["k1"].created_at is not None


def test_session_scope_rolls_back(engine: Engine) -> None:
    upgrade(engine)
    with pytest.raises(RuntimeError), session_scope(engine) as session:
        add_scores(session=session, scores=[score("k1")])
        raise RuntimeError("boom")
    with pytest.raises(DatabaseError) as err, session_scope(engine) as session:
        add_scores(session=session, scores=[score("k2")])
        session.execute(text("SELECT * FROM no_such_table"))
    assert "app.sqlite" in str(err.value) and "no_such_table" in str(err.value)
    with session_scope(engine) as session:
        assert get_scores(session=session, keys=["k1", "k2"]) == {}


def test_a_bad_url_is_one_clear_error() -> None:
    with pytest.raises(DatabaseError, match="database URL 'nonsense' is invalid"):
        create_app_engine("nonsense")
