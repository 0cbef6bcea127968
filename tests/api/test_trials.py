"""OptunaStudies against Optuna's own storage on SQLite and PostgreSQL: trials as Optuna gives them back."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import optuna
import pytest
from sqlalchemy import create_engine, inspect

from api.schemas import TrialPublic
from api.trials import OptunaStudies
from soce.errors import DatabaseError
from tests.db.conftest import postgres_admin, postgres_url  # noqa: F401  (fixtures, used by name)

TrialState = optuna.trial.TrialState


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty Optuna storage URL (no tables yet) on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.sqlite'}"
    return request.getfixturevalue("postgres_url")  # a throwaway database (tests/db/conftest.py)


@pytest.fixture
def studies(storage_url: str) -> Iterator[OptunaStudies]:
    reader = OptunaStudies(storage_url)
    yield reader
    reader.close()


def fill(url: str) -> optuna.storages.RDBStorage:
    """Studies 'max' (best value twice, an infinite value, pruned, failed and running trials), 'min' and
    'two' (two objectives)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(url)
    best = optuna.create_study(study_name="max", storage=storage, direction="maximize")
    for value in (0.2, 0.8, 0.5, 0.8, float("-inf")):
        trial = best.ask()
        trial.suggest_float("u0", 0.0, 1.0)
        trial.suggest_int("bucket", 1, 4)
        trial.suggest_categorical("space", ["simplex", "layerwise"])
        trial.set_user_attr("category_scores", {"a": value / 2, "b": [1, "x"]})
        best.tell(trial, value)
    best.tell(best.ask(), state=TrialState.PRUNED)
    best.tell(best.ask(), state=TrialState.FAIL)
    best.ask()  # left running
    low = optuna.create_study(study_name="min", storage=storage, direction="minimize")
    for value in (0.3, 0.1, 0.2):
        low.tell(low.ask(), value)
    two = optuna.create_study(study_name="two", storage=storage, directions=["maximize", "minimize"])
    two.tell(two.ask(), [0.5, 0.2])
    return storage


def as_optuna_has_it(trial: optuna.trial.FrozenTrial) -> dict:
    start, end = trial.datetime_start, trial.datetime_complete
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "values": trial.values,
        "params": trial.params,
        "user_attrs": trial.user_attrs,
        "datetime_start": start.astimezone(UTC) if start else None,
        "datetime_complete": end.astimezone(UTC) if end else None,
        "duration_seconds": (end - start).total_seconds() if end else None,
    }


def test_an_empty_storage_has_no_studies_and_stays_empty(studies: OptunaStudies, storage_url: str) -> None:
    assert studies.storage() is None
    assert studies.study("max") is None and studies.trials("max") is None
    assert studies.best_trial("max") is None and studies.best_trial("max", number=0) is None
    assert studies.complete_durations() == []
    if storage_url.startswith("sqlite"):
        assert not Path(storage_url.removeprefix("sqlite:///")).exists()  # the file is Optuna's to create
    else:
        engine = create_engine(storage_url)
        assert inspect(engine).get_table_names() == []  # and so are the tables
        engine.dispose()


def test_trials_and_best_trials_as_optuna_has_them(studies: OptunaStudies, storage_url: str) -> None:
    studies.trials("max")  # before Optuna made the storage: read again once it is there
    storage = fill(storage_url)
    frozen = optuna.load_study(study_name="max", storage=storage).get_trials(deepcopy=False)
    assert studies.storage() is studies.storage()  # one storage, opened once
    study_id, directions = studies.study("max")
    assert study_id == storage.get_study_id_from_name("max") and directions == ["maximize"]
    assert studies.study("two")[1] == ["maximize", "minimize"]

    page = studies.trials("max")
    assert page.directions == ["maximize"] and page.total == 8
    assert page.items == [as_optuna_has_it(t) for t in frozen]
    assert page.items[4]["values"] == [float("-inf")] and page.items[7]["state"] == "running"
    assert page.items[7]["datetime_complete"] is None and page.items[7]["duration_seconds"] is None
    assert all(t["datetime_start"].tzinfo is UTC for t in page.items)
    assert isinstance(page.items[0]["params"]["bucket"], int)
    assert page.items[0]["params"]["space"] in ("simplex", "layerwise")
    assert [TrialPublic(**t).number for t in page.items] == list(range(8))

    complete = studies.trials("max", state="COMPLETE", limit=2, offset=1)
    assert complete.total == 5 and complete.items == [as_optuna_has_it(t) for t in frozen[1:3]]
    assert studies.trials("max", state="pruned").items == [as_optuna_has_it(frozen[5])]
    assert studies.trials("max", offset=50) == (["maximize"], [], 8)
    assert studies.trials("missing") is None

    best = studies.best_trial("max")  # the best value, in the study's direction (two trials have it)
    assert best["values"] == [0.8] and best == as_optuna_has_it(frozen[best["number"]])
    assert studies.best_trial("min")["number"] == 1
    assert studies.best_trial("max", number=2) == as_optuna_has_it(frozen[2])
    assert studies.best_trial("max", number=99) is None
    assert studies.best_trial("two") is None and studies.best_trial("two", number=0) is None
    assert studies.best_trial("missing") is None and studies.best_trial("missing", number=0) is None
    assert sorted(studies.complete_durations()) == sorted(
        t.duration.total_seconds()
        for name in ("max", "min", "two")
        for t in optuna.load_study(study_name=name, storage=storage).get_trials(states=(TrialState.COMPLETE,))
    )
    storage.engine.dispose()


def test_a_kept_study_shows_what_changed_since(studies: OptunaStudies, storage_url: str) -> None:
    storage = fill(storage_url)
    assert studies.trials("max").total == 8 and studies.trials("min").total == 3
    search = optuna.load_study(study_name="max", storage=storage)
    search.tell(7, 0.9)  # the running trial ends, with the best value so far
    search.tell(search.ask(), 0.1)
    page = studies.trials("max")
    assert page.total == 9 and page.items[7]["state"] == "complete" and page.items[7]["values"] == [0.9]
    assert studies.best_trial("max")["number"] == 7
    assert studies.best_trial("max", number=8)["values"] == [0.1]

    # a study deleted and made again under its name is the new one
    optuna.delete_study(study_name="min", storage=storage)
    assert studies.trials("min") is None
    again = optuna.create_study(study_name="min", storage=storage, direction="maximize")
    again.tell(again.ask(), 0.7)
    page = studies.trials("min")
    assert page.directions == ["maximize"] and page.total == 1 and page.items[0]["values"] == [0.7]
    storage.engine.dispose()


def test_only_the_latest_studies_are_kept(studies: OptunaStudies, storage_url: str) -> None:
    fill(storage_url).engine.dispose()
    studies.kept_studies = 2
    for name in ("max", "min", "two", "min"):
        assert studies.trials(name) is not None
    assert list(studies._studies) == ["two", "min"]


def test_an_unreachable_storage_is_a_database_error_naming_it() -> None:
    studies = OptunaStudies("postgresql+psycopg://postgres:secret@127.0.0.1:1/optuna")
    named = r"Optuna database postgresql\+psycopg://postgres:\*\*\*@127\.0\.0\.1:1/optuna cannot be read"
    try:
        for read in (lambda: studies.trials("max"), lambda: studies.best_trial("max"), studies.storage):
            with pytest.raises(DatabaseError, match=named):
                read()
        with pytest.raises(DatabaseError) as e:
            studies.complete_durations()
        assert "secret" not in str(e.value)
    finally:
        studies.close()
