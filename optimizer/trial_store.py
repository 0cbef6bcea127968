"""A stored study's trials by number: the few storage calls that `optuna.Study` does not offer.

A trial asked in one process is evaluated in another (a trial task on a gpu worker), so the evaluator
holds a trial number, not an `optuna.Trial`. Telling works by number through the Study API
(`study.tell(number, ...)`); reading a trial and setting its user attributes by number go through the
storage's public methods (`BaseStorage.get_study_id_from_name`,
`get_trial_id_from_study_id_trial_number`, `get_trial`, `set_trial_user_attr`). Every call to Optuna
below the Study API is in this module, and tests/optimizer/test_trial_store.py pins the behaviour it
relies on, so an Optuna release that changes it fails there. So does `use_sampler`: the sampler of a
loaded study is replaced before each ask, which Optuna allows by assigning `Study.sampler`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from soce.errors import SearchError

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


def use_sampler(study: optuna.Study, sampler: optuna.samplers.BaseSampler) -> None:
    """Let `sampler` choose the next trials `study.ask()` asks."""
    study.sampler = sampler


class TrialStore:
    """The trials of `study`, stored in `storage` (the storage the study was created or loaded with)."""

    def __init__(self, study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
        self.study, self.storage = study, storage
        self.study_id = storage.get_study_id_from_name(study.study_name)

    def _trial_id(self, number: int) -> int:
        try:
            return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        except KeyError:
            raise SearchError(f"study {self.study.study_name!r} has no trial {number}") from None

    def get(self, number: int) -> optuna.trial.FrozenTrial:
        """Trial `number` as stored now."""
        return self.storage.get_trial(self._trial_id(number))

    def set_attrs(self, number: int, attrs: Mapping[str, Any]) -> None:
        """Set user attributes of trial `number`; raises UpdateFinishedTrialError if it has finished."""
        trial_id = self._trial_id(number)
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(trial_id, key, value)

    def fail(self, number: int, reason: str, *, ask_again: bool) -> bool:
        """Fail trial `number` if it still runs (nobody will finish it); whether it did.

        With `ask_again` its point is enqueued, so the next ask of the study tries it first.
        """
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        trial = self.get(number)
        if trial.state != TrialState.RUNNING:
            return False
        try:
            self.set_attrs(number, {"error": reason})
            self.study.tell(number, state=TrialState.FAIL)
        except (UpdateFinishedTrialError, ValueError):  # Study.tell: "Cannot tell a COMPLETE trial"
            return False  # it finished meanwhile: nothing was lost
        if ask_again and trial.params:
            self.study.enqueue_trial(trial.params)  # not skip_if_exists: this failed trial has them
        again = "; its point is asked again" if ask_again else ""
        log.info("trial %d of %s: %s; marked failed%s", number, self.study.study_name, reason, again)
        return True
