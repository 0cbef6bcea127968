"""OptunaTables against Optuna's own storage on SQLite and PostgreSQL: trials as Optuna gives them back."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from api.optuna_tables import OptunaTables
from tests.api.factories import counted
from tests.db.conftest import postgres_admin, postgres_url  # noqa: F401  (fixtures, used by name)

TrialState = optuna.trial.TrialState


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty Optuna storage URL (no tables yet) on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.sqlite'}"
    return request.getfixturevalue("postgres_url")  # a throwaway database (tests/db/conftest.py)


def fill(url: str) -> optuna.storages.RDBStorage:
    """Studies 'max' (a tie for best, an infinite value, pruned, failed and running trials), 'min' and
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
    for value in (0.3, 0.1, 0.1):
        low.tell(low.ask(), value)
    two = optuna.create_study(study_name="two", storage=storage, directions=["maximize", "minimize"])
    two.tell(two.ask(), [0.5, 0.2])
    return storage


def as_optuna_has_it(trial: optuna.trial.FrozenTrial) -> dict:
    end = trial.datetime_complete
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "values": trial.values,
        "params": trial.params,
        "user_attrs": trial.user_attrs,
        "datetime_start": trial.datetime_start,
        "datetime_complete": end,
        "duration_seconds": (end - trial.datetime_start).total_seconds() if end else None,
    }


def test_trials_and_best_trials_as_optuna_has_them(storage_url: str) -> None:
    tables = OptunaTables(storage_url)
    try:
        assert tables.best_trial("max") is None  # no tables yet: an empty storage
        storage = fill(storage_url)
        frozen = optuna.load_study(study_name="max", storage=storage).get_trials(deepcopy=False)
        study_id, directions = tables.study("max")
        assert directions == ["maximize"]

        page, total = tables.trials(study_id)
        assert total == 8 and page == [as_optuna_has_it(t) for t in frozen]
        assert page[4]["values"] == [float("-inf")] and page[7]["state"] == "running"
        complete, total = tables.trials(study_id, state="complete", limit=2, offset=1)
        assert total == 5 and complete == [as_optuna_has_it(t) for t in frozen[1:3]]
        assert tables.trials(study_id, offset=50) == ([], 8)

        # the first of the best values, in the study's direction
        assert tables.best_trial("max") == as_optuna_has_it(frozen[1])
        assert tables.best_trial("min")["number"] == 1
        assert tables.best_trial("max", number=2) == as_optuna_has_it(frozen[2])
        assert tables.best_trial("max", number=99) is None
        assert tables.best_trial("two") is None and tables.best_trial("two", number=0) is None
        assert tables.best_trial("missing") is None
        storage.engine.dispose()
    finally:
        tables.close()


def test_a_best_trial_is_one_query_and_a_complete_one_is_kept(storage_url: str) -> None:
    fill(storage_url).engine.dispose()
    tables = OptunaTables(storage_url, cached_trials=2)
    try:
        engine = tables._connectable()
        assert engine is not None
        with counted(engine) as statements:
            best = tables.best_trial("max")
        assert len(statements) == 1
        with counted(engine) as statements:
            for _ in range(3):
                assert tables.best_trial("max", number=1) == best
        assert statements == []

        with counted(engine) as statements:
            tables.best_trial("max", number=0)
            tables.best_trial("max", number=2)  # the oldest read (number 1) makes room
            tables.best_trial("max", number=1)
            tables.best_trial("max", number=7)  # running: read each time, never kept
            tables.best_trial("max", number=7)
        assert len(statements) == 5
    finally:
        tables.close()
