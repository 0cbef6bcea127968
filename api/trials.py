"""Optuna's studies and trials as the API shows them, read through Optuna's public API.

Optuna is imported inside the methods, so the API starts without it. One `RDBStorage` per app is
opened on first use and never creates anything: a storage Optuna has not made yet (no SQLite file, no
tables) reads as a storage without studies. Loaded studies are kept (the least recently read dropped
first): Optuna caches each study's finished trials, which never change, and reads only new and
unfinished ones again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Container, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from soce.errors import DatabaseError

if TYPE_CHECKING:
    from optuna import Study
    from optuna.storages import RDBStorage
    from optuna.trial import FrozenTrial, TrialState


class StudyTrials(NamedTuple):
    """A page of a study's trials by number, with the study's directions and how many trials match."""

    directions: list[str]
    items: list[dict[str, Any]]
    total: int


def _utc(when: datetime | None) -> datetime | None:
    """Optuna records naive local times (of the process that wrote them): give them as UTC."""
    return None if when is None else when.astimezone(UTC)


def trial_fields(trial: FrozenTrial) -> dict[str, Any]:
    """A trial as the API shows it (TrialPublic's fields)."""
    duration = trial.duration
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "values": trial.values,
        "params": trial.params,
        "user_attrs": trial.user_attrs,
        "datetime_start": _utc(trial.datetime_start),
        "datetime_complete": _utc(trial.datetime_complete),
        "duration_seconds": None if duration is None else duration.total_seconds(),
    }


def _root(e: BaseException) -> BaseException:
    """The database driver's error behind Optuna's and SQLAlchemy's wrappers."""
    while e.__cause__ is not None:
        e = e.__cause__
    return e


def _no_tables(e: BaseException) -> bool:
    """Whether `e` says Optuna's tables do not exist (yet)."""
    text = str(_root(e)).lower()
    return "no such table" in text or ("relation" in text and "does not exist" in text)


class OptunaStudies:
    """The studies and trials of the Optuna storage at `url`, for the API's reads.

    Failures to reach or read the storage raise DatabaseError naming the database.
    """

    def __init__(self, url: str, *, kept_studies: int = 128) -> None:
        self.url = url
        self.kept_studies = kept_studies
        self._storage: RDBStorage | None = None
        self._studies: OrderedDict[str, Study] = OrderedDict()
        self._lock = threading.Lock()

    def _failure(self, e: BaseException) -> DatabaseError:
        where = make_url(self.url).render_as_string(hide_password=True)
        first = (str(_root(e)).strip().splitlines() or [type(e).__name__])[0]
        return DatabaseError(f"Optuna database {where} cannot be read ({first})")

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Optuna's and SQLAlchemy's errors as DatabaseError."""
        from optuna.exceptions import OptunaError

        try:
            yield
        except (SQLAlchemyError, OptunaError) as e:
            raise self._failure(e) from e

    def storage(self) -> RDBStorage | None:
        """The storage, opened once; None while Optuna has not created it."""
        if self._storage is not None:
            return self._storage
        parsed = make_url(self.url)
        if parsed.get_backend_name() == "sqlite":
            db = parsed.database
            if not db or db == ":memory:" or not Path(db).expanduser().is_file():
                return None  # opening it would create the file
        import optuna
        from optuna.exceptions import OptunaError

        try:
            storage = optuna.storages.RDBStorage(
                self.url, engine_kwargs={"pool_pre_ping": True}, skip_table_creation=True
            )
        except (SQLAlchemyError, OptunaError, RuntimeError) as e:  # RuntimeError: an older schema
            if _no_tables(e):
                return None
            raise self._failure(e) from e
        with self._lock:
            if self._storage is None:
                self._storage = storage
                return storage
        storage.engine.dispose()  # another thread opened it first
        return self._storage

    def _study(self, study_name: str) -> Study | None:
        """The named study, loaded once and kept; None when it is not stored."""
        with self._lock:
            study = self._studies.get(study_name)
            if study is not None:
                self._studies.move_to_end(study_name)
                return study
        storage = self.storage()
        if storage is None:
            return None
        import optuna

        with self._reading():
            try:
                study = optuna.load_study(study_name=study_name, storage=storage)
            except KeyError:  # no such study
                return None
        with self._lock:
            self._studies[study_name] = study
            while len(self._studies) > self.kept_studies:
                self._studies.popitem(last=False)
        return study

    def _trials(
        self, study_name: str, states: Container[TrialState] | None = None
    ) -> tuple[Study, list[FrozenTrial]] | None:
        """The study and its trials by number (in `states` only, if given); None without the study."""
        for _ in range(2):
            study = self._study(study_name)
            if study is None:
                return None
            with self._reading():
                try:
                    return study, study.get_trials(deepcopy=False, states=states)
                except KeyError:  # deleted since it was loaded: load it again
                    with self._lock:
                        self._studies.pop(study_name, None)
        return None

    def study(self, study_name: str) -> tuple[int, list[str]] | None:
        """(study id, directions by objective) of the named study, or None when it is not stored."""
        study = self._study(study_name)
        storage = self.storage()
        if study is None or storage is None:
            return None
        with self._reading():
            try:
                study_id = storage.get_study_id_from_name(study_name)
            except KeyError:
                return None
        return study_id, [d.name.lower() for d in study.directions]

    def trials(
        self, study_name: str, *, state: str | None = None, limit: int = 100, offset: int = 0
    ) -> StudyTrials | None:
        """A page of the study's trials by number (in `state` only, if given); None without the study."""
        from optuna.trial import TrialState

        states = None if state is None else (TrialState[state.upper()],)
        found = self._trials(study_name, states)
        if found is None:
            return None
        study, trials = found
        return StudyTrials(
            directions=[d.name.lower() for d in study.directions],
            items=[trial_fields(t) for t in trials[offset : offset + limit]],
            total=len(trials),
        )

    def best_trial(self, study_name: str, *, number: int | None = None) -> dict[str, Any] | None:
        """The best complete trial of a one-objective study (None for multi-objective or none finished).

        With `number` (the best trial as the job's search recorded it), that trial of a one-objective
        study, from the study's kept trials.
        """
        if number is not None:
            found = self._trials(study_name)
            if found is None or len(found[0].directions) != 1:
                return None
            return next((trial_fields(t) for t in found[1] if t.number == number), None)
        study = self._study(study_name)
        if study is None or len(study.directions) != 1:
            return None
        with self._reading():
            try:
                return trial_fields(study.best_trial)
            except ValueError:  # no complete trial yet
                return None

    def complete_durations(self) -> list[float]:
        """Seconds each complete trial took, over every study (for /metrics)."""
        storage = self.storage()
        if storage is None:
            return []
        import optuna
        from optuna.trial import TrialState

        with self._reading():
            names = optuna.get_all_study_names(storage)
        seconds = []
        for name in names:
            found = self._trials(name, (TrialState.COMPLETE,))
            for trial in found[1] if found is not None else []:
                if trial.duration is not None:
                    seconds.append(trial.duration.total_seconds())
        return seconds

    def close(self) -> None:
        """Forget the loaded studies and close the storage's connections."""
        with self._lock:
            self._studies.clear()
            storage, self._storage = self._storage, None
        if storage is not None:
            storage.engine.dispose()
