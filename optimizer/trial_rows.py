"""Finished trials stored in an Optuna RDB storage as a few bulk inserts in one transaction.

`RDBStorage.create_new_trial(template_trial=...)` stores a finished trial row by row through the
ORM, looking up each parameter's earlier distributions and each attribute before inserting it: some
twenty statements, about 35 ms a trial on SQLite here, more than merging a soup. A search that asks
and tells in memory (`WeightSearch.run`) only needs the finished trial written as it is, so this
writes the same rows with Optuna's own table definitions (`optuna.storages._rdb.models`, so column
types and value encodings are Optuna's) in one transaction per batch of trials.

The trial number is the study's trial count, taken under a lock on the study row as Optuna does; a
study that gained trials from elsewhere meanwhile is refused, never renumbered. Storages that are not
RDB storages (in memory, journal files) get Optuna's `create_new_trial`. `tests/optimizer` checks
the rows read back through Optuna's API equal those Optuna itself writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from soce.errors import SearchError

if TYPE_CHECKING:
    import optuna


class TrialRows:
    """Writes finished trials into one study of the storage `study` lives in."""

    def __init__(self, study: optuna.Study) -> None:
        from optuna.storages import RDBStorage

        self.study = study
        storage = study._storage
        backend = getattr(storage, "_backend", storage)  # RDBStorage comes wrapped in a cache
        self.engine = backend.engine if isinstance(backend, RDBStorage) else None

    def write(self, trials: Sequence[optuna.trial.FrozenTrial]) -> None:
        """Store `trials` (finished, numbered from the study's trial count on) in one transaction."""
        if not trials:
            return
        if self.engine is None:
            self._write_one_by_one(trials)
            return
        from optuna.storages._rdb import models
        from sqlalchemy import func, insert, select

        study_id = self.study._study_id
        t_trials = models.TrialModel.__table__
        with self.engine.begin() as conn:
            # the lock Optuna takes to number trials: concurrent writers to one study wait here
            conn.execute(
                select(models.StudyModel.__table__.c.study_id)
                .where(models.StudyModel.__table__.c.study_id == study_id)
                .with_for_update()
            )
            count = conn.scalar(
                select(func.count()).select_from(t_trials).where(t_trials.c.study_id == study_id)
            )
            rows: dict[Any, list[dict[str, Any]]] = {}
            for trial in trials:
                if not trial.state.is_finished():
                    raise SearchError(f"trial {trial.number} is {trial.state.name}, not finished")
                if trial.number != count:
                    raise SearchError(
                        f"study {self.study.study_name!r} was changed by another process during the search "
                        f"(its trial {trial.number} would be stored as {count}); run one search per study "
                        "at a time"
                    )
                trial_id = conn.execute(
                    insert(t_trials).values(
                        number=trial.number,
                        study_id=study_id,
                        state=trial.state,
                        datetime_start=trial.datetime_start,
                        datetime_complete=trial.datetime_complete,
                    )
                ).inserted_primary_key[0]
                count += 1
                for table, row in _rows(models, trial, trial_id):
                    rows.setdefault(table, []).append(row)
            for table, values in rows.items():
                conn.execute(insert(table), values)

    def _write_one_by_one(self, trials: Sequence[optuna.trial.FrozenTrial]) -> None:
        storage = self.study._storage
        for trial in trials:
            trial_id = storage.create_new_trial(self.study._study_id, template_trial=trial)
            number = storage.get_trial_number_from_id(trial_id)
            if number != trial.number:
                raise SearchError(
                    f"study {self.study.study_name!r} was changed by another process during the search "
                    f"(trial {trial.number} was stored as {number}); run one search per study at a time"
                )


def _rows(models: Any, trial: optuna.trial.FrozenTrial, trial_id: int) -> list[tuple[Any, dict[str, Any]]]:
    """(table, row) for everything of `trial` beyond its row in `trials`, encoded as Optuna does."""
    from optuna.distributions import distribution_to_json

    out: list[tuple[Any, dict[str, Any]]] = []
    values = trial.values or []
    for objective, value in enumerate(values):
        stored, kind = models.TrialValueModel.value_to_stored_repr(value)
        out.append(
            (
                models.TrialValueModel.__table__,
                {"trial_id": trial_id, "objective": objective, "value": stored, "value_type": kind},
            )
        )
    for name, value in trial.params.items():
        dist = trial.distributions[name]
        out.append(
            (
                models.TrialParamModel.__table__,
                {
                    "trial_id": trial_id,
                    "param_name": name,
                    "param_value": dist.to_internal_repr(value),
                    "distribution_json": distribution_to_json(dist),
                },
            )
        )
    for model, attrs in (
        (models.TrialUserAttributeModel, trial.user_attrs),
        (models.TrialSystemAttributeModel, trial.system_attrs),
    ):
        for key, value in attrs.items():
            out.append((model.__table__, {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}))
    for step, value in trial.intermediate_values.items():
        stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
        out.append(
            (
                models.TrialIntermediateValueModel.__table__,
                {
                    "trial_id": trial_id,
                    "step": step,
                    "intermediate_value": stored,
                    "intermediate_value_type": kind,
                },
            )
        )
    return out
