"""The Optuna behaviour optimizer.trial_store relies on, pinned on a real SQLite storage and in memory."""

from __future__ import annotations

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from optimizer.trial_store import TrialStore, use_sampler
from soce.errors import SearchError


@pytest.fixture(params=["memory", "sqlite"])
def study(request, tmp_path):
    url = None if request.param == "memory" else f"sqlite:///{tmp_path / 'optuna.sqlite'}"
    storage = optuna.storages.get_storage(url)
    return optuna.create_study(study_name="pinned", storage=storage), storage


def test_a_trial_asked_here_is_read_updated_and_told_by_number(study):
    study, storage = study
    store = TrialStore(study, storage)
    trial = study.ask()
    trial.suggest_float("u0", 0.0, 1.0)
    number = trial.number
    store.set_attrs(number, {"weights": {"a": 0.5}, "job": 3})
    assert store.get(number).user_attrs == {"weights": {"a": 0.5}, "job": 3}
    assert store.get(number).state == TrialState.RUNNING
    study.tell(number, 0.75)  # Study.tell takes a trial number
    assert store.get(number).state == TrialState.COMPLETE and store.get(number).value == 0.75
    study.tell(number, 0.1, skip_if_finished=True)  # a second tell changes nothing
    assert store.get(number).value == 0.75
    with pytest.raises(ValueError, match="Cannot tell a COMPLETE trial"):
        study.tell(number, 0.1)
    with pytest.raises(UpdateFinishedTrialError):
        store.set_attrs(number, {"late": True})


def test_an_unknown_trial_number_is_a_search_error(study):
    study, storage = study
    with pytest.raises(SearchError, match="has no trial 5"):
        TrialStore(study, storage).get(5)


def test_failing_a_running_trial_records_why_and_can_ask_its_point_again(study):
    study, storage = study
    store = TrialStore(study, storage)
    trial = study.ask()
    x = trial.suggest_float("u0", 0.0, 1.0)
    assert store.fail(trial.number, "worker gone", ask_again=True) is True
    failed = store.get(trial.number)
    assert failed.state == TrialState.FAIL and failed.user_attrs["error"] == "worker gone"
    assert store.fail(trial.number, "again", ask_again=True) is False  # finished: nothing to do
    again = study.ask()
    assert again.suggest_float("u0", 0.0, 1.0) == pytest.approx(x)  # the enqueued point comes first


def test_pruned_trials_are_told_by_number_without_values(study):
    study, storage = study
    trial = study.ask()
    study.tell(trial.number, state=TrialState.PRUNED)
    assert TrialStore(study, storage).get(trial.number).state == TrialState.PRUNED


def test_a_sampler_set_on_a_loaded_study_chooses_its_next_trial(study):
    study, _ = study

    class Fixed(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, name, distribution):
            return 0.25

    use_sampler(study, Fixed())
    assert study.ask().suggest_float("u0", 0.0, 1.0) == 0.25
    use_sampler(study, optuna.samplers.RandomSampler(seed=3))
    first = study.ask().suggest_float("u0", 0.0, 1.0)
    use_sampler(study, optuna.samplers.RandomSampler(seed=3))
    assert study.ask().suggest_float("u0", 0.0, 1.0) == first  # the same seed draws the same point
