"""Trials stored by optimizer.trial_rows read back through Optuna's API exactly as those Optuna stores
itself, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from optimizer.trial_rows import TrialRows
from soce.errors import SearchError
from tests.db.conftest import postgres_admin, postgres_url  # noqa: F401  (fixtures, used by name)

START = datetime(2026, 11, 22, 3, 4, 5, 678000)


def _trials(multi: bool) -> list[optuna.trial.FrozenTrial]:
    dists = {
        "u0": FloatDistribution(0.0, 1.0),
        "lr": FloatDistribution(1e-5, 1e-1, log=True),
        "k": IntDistribution(1, 9, step=2),
        "grid_point": CategoricalDistribution([0, 1, 2, 3]),
        "name": CategoricalDistribution(["a", "b", None]),
    }
    values = [[0.25, -1.5], [math.inf, -math.inf], None]
    out = []
    for i, state in enumerate((TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)):
        complete = state == TrialState.COMPLETE
        value = values[i] if complete else None
        t = create_trial(
            state=state,
            values=(value if multi else [value[0]]) if value else None,
            params={
                "u0": 0.125 * i,
                "lr": 10 ** -(i + 2),
                "k": 1 + 2 * i,
                "grid_point": i,
                "name": [None, "a", "b", "a"][i],
            },
            distributions=dists,
            user_attrs={
                "weights": {"m1": 0.5, "m2": 0.5},
                "category_scores": {"x": 0.1 * i},
                "objective": 0.3,
                "note": "ünïcode",
            },
            system_attrs={"fixed_params": {"grid_point": i}} if i % 2 else {},
            intermediate_values={0: 0.5, 1: math.nan, 2: math.inf} if state == TrialState.PRUNED else {},
        )
        t.number = i
        t.datetime_start = START + timedelta(seconds=i)
        t.datetime_complete = START + timedelta(seconds=i, milliseconds=250)
        out.append(t)
    return out


def _same(a: optuna.trial.FrozenTrial, b: optuna.trial.FrozenTrial) -> None:
    assert (a.number, a.state, a.params, a.distributions) == (b.number, b.state, b.params, b.distributions)
    assert a.user_attrs == b.user_attrs and a.system_attrs == b.system_attrs
    assert (a.datetime_start, a.datetime_complete) == (b.datetime_start, b.datetime_complete)
    assert (a.values is None) == (b.values is None)
    if a.values is not None:
        assert a.values == b.values
    assert a.intermediate_values.keys() == b.intermediate_values.keys()
    for step, v in a.intermediate_values.items():
        w = b.intermediate_values[step]
        assert (math.isnan(v) and math.isnan(w)) or v == w


@pytest.mark.parametrize("multi", [False, True], ids=["one objective", "two objectives"])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_rows_read_back_as_optunas_own(backend: str, multi: bool, tmp_path, request) -> None:
    url = request.getfixturevalue("postgres_url") if backend == "postgresql" else f"sqlite:///{tmp_path}/o.db"
    storage = optuna.storages.RDBStorage(url)
    directions = ["maximize", "minimize"] if multi else ["maximize"]
    ours = optuna.create_study(study_name="ours", storage=storage, directions=directions)
    theirs = optuna.create_study(study_name="theirs", storage=storage, directions=directions)
    trials = _trials(multi)
    TrialRows(ours).write(trials[:1])
    TrialRows(ours).write(trials[1:])  # numbering goes on from the study's count
    for t in trials:
        theirs.add_trial(t)
    fresh = optuna.storages.RDBStorage(url)  # no cache of this process in the way
    got = optuna.load_study(study_name="ours", storage=fresh).trials
    want = optuna.load_study(study_name="theirs", storage=fresh).trials
    assert len(got) == len(want) == 4
    for a, b in zip(got, want, strict=True):
        _same(a, b)
    # the study object that wrote them sees them too (Optuna's cache reads what is new)
    assert [t.number for t in ours.trials] == [0, 1, 2, 3]
    # and Optuna goes on numbering after them
    assert ours.ask().number == 4


def test_a_study_changed_meanwhile_is_refused_not_renumbered(tmp_path) -> None:
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/o.db")
    trials = _trials(False)
    study.add_trial(trials[0])  # someone else stored trial 0
    with pytest.raises(SearchError, match="changed by another process"):
        TrialRows(study).write(trials[:2])
    assert len(study.trials) == 1  # nothing of the refused batch was stored
    running = _trials(False)[1]
    running.state, running.values, running.number = TrialState.RUNNING, None, 1
    running.datetime_complete = None
    with pytest.raises(SearchError, match="not finished"):
        TrialRows(study).write([running])


def test_other_storages_store_through_optuna(tmp_path) -> None:
    study = optuna.create_study(study_name="s", storage=optuna.storages.InMemoryStorage())
    TrialRows(study).write(_trials(False))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL", "PRUNED"]
