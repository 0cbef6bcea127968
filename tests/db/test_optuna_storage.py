"""Optuna's own database (soce.db.optuna_storage), on PostgreSQL and SQLite: Optuna creates its tables
once and finds them after, studies open on it (SQLite in WAL mode), failures name the database without
its password, and `soce db upgrade --optuna` says what was done."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from soce.cli import app
from soce.config import Settings, get_settings
from soce.db.optuna_storage import optuna_storage, upgrade_optuna_storage
from soce.errors import DatabaseError, SearchError

UNREACHABLE = "postgresql+psycopg://postgres:secret@127.0.0.1:1/nowhere"


@pytest.fixture(params=["postgresql", "sqlite"])
def optuna_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'not-yet' / 'optuna.sqlite'}"  # its folder is made too


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Environment variables the cached Settings are read from again."""
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_upgrade_creates_the_tables_once_and_studies_open_on_them(optuna_url: str) -> None:
    made = upgrade_optuna_storage(url=optuna_url)
    assert made.created and not made.changed and made.before == made.head
    again = upgrade_optuna_storage(url=optuna_url)
    assert not again.created and not again.changed and again.head == made.head

    storage = optuna_storage(url=optuna_url)
    try:
        study = optuna.create_study(study_name="probe", storage=storage)
        study.optimize(lambda trial: trial.suggest_float("w", 0, 1), n_trials=2)
        assert len(optuna.load_study(study_name="probe", storage=storage).trials) == 2
    finally:
        storage.engine.dispose()


def test_sqlite_storage_writes_ahead(tmp_path: Path) -> None:
    storage = optuna_storage(Settings(data_dir=tmp_path / "data"))  # the embedded default
    try:
        with storage.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        storage.engine.dispose()
    assert (tmp_path / "data" / "optuna.sqlite").is_file()


def test_failures_name_the_database_without_its_password() -> None:
    with pytest.raises(DatabaseError) as prepared:
        upgrade_optuna_storage(url=UNREACHABLE)
    message = str(prepared.value)
    assert message.startswith("Optuna database postgresql+psycopg://postgres:***@127.0.0.1:1/nowhere ")
    assert "cannot be prepared (" in message and "secret" not in message
    with pytest.raises(SearchError) as opened:
        optuna_storage(url=UNREACHABLE)
    assert str(opened.value).startswith("Optuna storage 127.0.0.1:1/nowhere cannot be used: ")


def test_cli_db_upgrade_optuna(tmp_path: Path, settings_env: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.sqlite'}"
    settings_env.setenv("SOCE_OPTUNA_STORAGE_URL", url)
    args = ["db", "upgrade", "--optuna", "--database-url", f"sqlite:///{tmp_path / 'app.sqlite'}"]
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    head = upgrade_optuna_storage(url=url).head
    assert first.stdout.splitlines()[-1] == f"Optuna database {url}: created at {head}"
    second = runner.invoke(app, args)
    assert second.stdout.splitlines()[-1] == f"Optuna database {url}: already at {head}"

    settings_env.setenv("SOCE_OPTUNA_STORAGE_URL", UNREACHABLE)
    get_settings.cache_clear()
    failed = runner.invoke(app, args)
    assert failed.exit_code == 2 and "Traceback" not in failed.output
    assert failed.stderr.startswith("error: Optuna database postgresql+psycopg://postgres:***@127.0.0.1:1/")
