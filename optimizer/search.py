"""Weight search with Optuna: the paper's grid, TPE, CMA-ES and NSGA-II over soup weights.

Evaluation arrives as a callable (weights, categories) -> {category: dev score}; this module never
touches a model. Trials are asked and told one by one (up to `parallel` in flight), so a study in
any Optuna storage can be stopped and continued: finished trials are never run again, a trial left
running by a crash is marked failed and its point asked again first. A point that rounds to weights
already evaluated in the study reuses that result instead of evaluating again.

`run()` drives the whole loop in this process. The same study can instead be driven from outside,
one trial at a time in other processes: `begin()` once, `ask_trials()` wherever the next trials are
decided, `evaluate_trial(number)` wherever a trial runs (it tells the study; telling twice is a
no-op), `tally()` to see what is finished and what runs. The caller serialises the asking.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from optimizer.space import SearchSpace, SoupWeights, grid_points
from optimizer.trial_rows import TrialRows
from soce.errors import SearchError

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

SamplerName = Literal["grid", "tpe", "cmaes", "nsga2"]
SAMPLERS: tuple[str, ...] = ("grid", "tpe", "cmaes", "nsga2")
Evaluate = Callable[[SoupWeights, Sequence[str]], Mapping[str, float]]


class Scored(dict):
    """Category scores of one evaluation, with where its time went (seconds by part)."""

    def __init__(self, scores: Mapping[str, float], timings: Mapping[str, float] | None = None) -> None:
        super().__init__(scores)
        self.timings = dict(timings or {})


@dataclass(frozen=True)
class SearchConfig:
    sampler: SamplerName = "tpe"
    n_trials: int | None = None  # None: every grid point for `grid`, 40 otherwise
    seed: int = 0
    parallel: int = 1
    pruning: bool = False
    category_weights: Mapping[str, float] = field(default_factory=dict)

    def trials_for(self, space: SearchSpace) -> int:
        if self.n_trials is not None:
            return self.n_trials
        return len(grid_points(space.k)) if self.sampler == "grid" else 40


@dataclass(frozen=True)
class TrialRecord:
    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING
    objective: float | None
    weights: SoupWeights | None
    category_scores: dict[str, float]
    evaluated: bool  # False: the result of an earlier trial with the same weights was reused
    timings: dict[str, float]

    def as_dict(self, best_so_far: float | None) -> dict[str, Any]:
        w = self.weights.as_dict() if self.weights else {"weights": {}}
        return {
            "number": self.number,
            "state": self.state,
            "objective": self.objective,
            "best_so_far": best_so_far,
            **w,
            "category_scores": self.category_scores,
            "evaluated": self.evaluated,
            "timings": self.timings,
        }


@dataclass(frozen=True)
class SearchResult:
    study_name: str
    sampler: str
    space: str
    n_trials: int
    evaluations: int  # model evaluations actually run (over the study's whole life)
    best: TrialRecord
    history: list[TrialRecord]

    def history_dicts(self) -> list[dict[str, Any]]:
        out, best = [], None
        for t in self.history:
            if t.state == "COMPLETE" and t.objective is not None:
                best = t.objective if best is None else max(best, t.objective)
            out.append(t.as_dict(best))
        return out


def objective_of(
    scores: Mapping[str, float], categories: Sequence[str], weights: Mapping[str, float]
) -> float:
    total = sum(weights.get(c, 1.0) for c in categories)
    return sum(scores[c] * weights.get(c, 1.0) for c in categories) / total


def make_sampler(config: SearchConfig, space: SearchSpace) -> optuna.samplers.BaseSampler:
    import optuna

    name = config.sampler
    if name == "grid":
        if space.name != "simplex":
            raise SearchError(
                "the grid sampler searches one simplex of weights; use tpe, cmaes or nsga2 for layerwise"
            )
        # the points themselves are enqueued (see WeightSearch.run); this only fills what is asked
        return optuna.samplers.RandomSampler(seed=config.seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=config.seed, multivariate=True, n_startup_trials=max(4, space.dimension + 1)
        )
    if name == "cmaes":
        if space.dimension < 2:
            raise SearchError(
                f"cmaes needs at least 2 search dimensions; {space.k} experts on a {space.name} space give "
                f"{space.dimension} (use tpe or grid)"
            )
        # starts at the centre of the cube, close to uniform weights; the uniform point is enqueued first
        return optuna.samplers.CmaEsSampler(seed=config.seed, n_startup_trials=0)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(
            seed=config.seed, population_size=max(8, 2 * space.dimension + 4)
        )
    raise SearchError(f"unknown sampler {name!r}; available: {', '.join(SAMPLERS)}")


def _seed_for(seed: int, n_trials: int) -> int:
    digest = hashlib.sha256(f"{seed}:{n_trials}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def abandon_trial(study: optuna.Study, number: int, reason: str, *, ask_again: bool) -> bool:
    """Fail trial `number` if it still runs (nobody will finish it); whether it did.

    With `ask_again` its point is enqueued, so the next ask of the study tries it first.
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    trial = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, number))
    if trial.state != TrialState.RUNNING:
        return False
    try:
        storage.set_trial_user_attr(trial._trial_id, "error", reason)
        storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False  # it finished meanwhile: nothing was lost
    if ask_again and trial.params:
        study.enqueue_trial(trial.params)  # not skip_if_exists: this failed trial has them
    again = "; its point is asked again" if ask_again else ""
    log.info("trial %d of %s: %s; marked failed%s", number, study.study_name, reason, again)
    return True


def _record(trial: optuna.trial.FrozenTrial, space: SearchSpace) -> TrialRecord:
    attrs = trial.user_attrs
    weights = None
    try:
        weights = space.from_params(trial.params) if trial.params or space.k == 1 else None
    except (KeyError, IndexError):
        weights = None
    obj = attrs.get("objective")
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        objective=float(obj) if obj is not None else None,
        weights=weights,
        category_scores={k: float(v) for k, v in (attrs.get("category_scores") or {}).items()},
        evaluated=attrs.get("reused_from") is None,
        timings={k: float(v) for k, v in (attrs.get("timings") or {}).items()},
    )


class WeightSearch:
    """One study: its sampler, space and evaluation; `run()` continues it to `n_trials` finished trials."""

    def __init__(
        self,
        space: SearchSpace,
        categories: Sequence[str],
        evaluate: Evaluate,
        config: SearchConfig,
        *,
        storage: str | optuna.storages.BaseStorage,
        study_name: str,
    ) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if config.parallel < 1:
            raise SearchError(f"parallel trials must be at least 1, got {config.parallel}")
        if config.sampler == "nsga2" and config.pruning:
            raise SearchError("pruning needs one objective; nsga2 optimises one per category")
        self.space, self.categories, self.evaluate, self.config = space, list(categories), evaluate, config
        self.multi = config.sampler == "nsga2"
        self.n_trials = config.trials_for(space)
        if config.sampler == "grid" and self.n_trials > len(grid_points(space.k)):
            raise SearchError(
                f"n_trials={self.n_trials} is more than the {len(grid_points(space.k))} points of the grid "
                f"for {space.k} experts"
            )
        identity = {
            "experts": list(space.experts),
            "space": space.name,
            "groups": list(space.groups),
            "sampler": config.sampler,
            "categories": self.categories,
        }
        try:
            self.study = optuna.create_study(
                study_name=study_name,
                storage=storage,
                sampler=make_sampler(config, space),
                directions=["maximize"] * (len(self.categories) if self.multi else 1),
                load_if_exists=True,
            )
        except ValueError as e:  # an existing study with other directions
            raise SearchError(f"study {study_name!r} cannot be continued: {e}") from None
        stored = self.study.user_attrs.get("identity")
        if stored is None:
            self.study.set_user_attr("identity", identity)
        elif stored != identity:
            raise SearchError(
                f"study {study_name!r} was made for another search ({stored}); it cannot be continued"
            )
        self._lock = threading.Lock()
        self._rows = TrialRows(self.study)
        self._known: dict[tuple, tuple[int, dict[str, float]]] = {}
        self._best: float | None = None

    # bookkeeping -------------------------------------------------------------------------------
    def _objective(self, scores: Mapping[str, float]) -> float:
        return objective_of(scores, self.categories, self.config.category_weights)

    def _recover(self) -> int:
        """Fail trials a dead process left running, ask their points again; count finished trials."""
        _, running = self.tally()
        for t in running:
            self._abandon(t, "left running by a process that stopped")
        return self._load_finished()

    def _load_finished(self) -> int:
        """Remember the finished trials' points and the best objective; how many trials are finished."""
        from optuna.trial import TrialState

        finished = 0
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            finished += 1
            if t.state == TrialState.COMPLETE and "category_scores" in t.user_attrs:
                rec = _record(t, self.space)
                with self._lock:
                    if rec.weights is not None:
                        self._known.setdefault(rec.weights.key(), (t.number, rec.category_scores))
                    if rec.objective is not None:
                        self._best = rec.objective if self._best is None else max(self._best, rec.objective)
        return finished

    def _abandon(self, trial: optuna.trial.FrozenTrial, reason: str) -> None:
        self._abandon_in(self.study, trial, reason)

    def _abandon_in(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str) -> None:
        # as before: a sampler's point is asked again; grid points are enqueued once, by _seed_points
        abandon_trial(study, trial.number, reason, ask_again=self.config.sampler != "grid")

    def _seed_points(self, finished: int, study: optuna.Study | None = None) -> None:
        """Enqueue the points every search starts from (none are enqueued twice)."""
        study = study or self.study
        if finished >= self.n_trials:
            return
        if self.config.sampler == "grid":
            # every point once, in a seeded order; points already in the study are not enqueued again
            order = list(range(len(grid_points(self.space.k))))
            random.Random(self.config.seed).shuffle(order)
            for idx in order[: self.n_trials]:
                study.enqueue_trial({"grid_point": idx}, skip_if_exists=True)
        elif finished == 0:
            # start from the uniform soup: a strong, known point that every sampler should beat
            study.enqueue_trial(
                self.space.params_for([1.0 / self.space.k] * self.space.k), skip_if_exists=True
            )

    def _weights(self, trial: optuna.Trial) -> SoupWeights:
        if self.config.sampler == "grid":
            points = grid_points(self.space.k)
            idx = trial.suggest_categorical("grid_point", list(range(len(points))))
            return SoupWeights(self.space.experts, tuple(points[int(idx)]))
        return self.space.suggest(trial)

    # one trial -----------------------------------------------------------------------------------
    def _run_trial(self, trial: optuna.Trial, weights: SoupWeights) -> None:
        from optuna.trial import TrialState

        started = time.perf_counter()
        trial.set_user_attr("weights", dict(zip(weights.experts, weights.weights, strict=True)))
        if weights.groups:
            trial.set_user_attr("layer_weights", {g: list(w) for g, w in weights.groups.items()})
        with self._lock:
            known = self._known.get(weights.key())
        timings: dict[str, float] = {}
        scores: dict[str, float] = {}
        pruned = False
        if known is not None:
            trial.set_user_attr("reused_from", known[0])
            scores = dict(known[1])
        elif self.config.pruning:
            for i, cat in enumerate(self.categories):
                part = self.evaluate(weights, [cat])
                scores[cat] = float(part[cat])
                for k, v in getattr(part, "timings", {}).items():
                    timings[k] = timings.get(k, 0.0) + v
                with self._lock:
                    best = self._best
                rest = self.categories[i + 1 :]
                if rest and best is not None:
                    upper = self._objective({**scores, **{c: 1.0 for c in rest}})  # metrics are at most 1
                    if upper < best:
                        pruned = True
                        break
        else:
            part = self.evaluate(weights, self.categories)
            scores = {c: float(part[c]) for c in self.categories}
            timings.update(getattr(part, "timings", {}))
        trial.set_user_attr("category_scores", scores)
        timings["total"] = time.perf_counter() - started
        trial.set_user_attr("timings", timings)
        if pruned:
            trial.set_user_attr("pruned_after", list(scores))
            trial.study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            return
        objective = self._objective(scores)
        trial.set_user_attr("objective", objective)
        with self._lock:
            self._known.setdefault(weights.key(), (trial.number, scores))
            self._best = objective if self._best is None else max(self._best, objective)
        values: float | list[float] = [scores[c] for c in self.categories] if self.multi else objective
        trial.study.tell(trial, values, skip_if_finished=True)

    def _fail(self, trial: optuna.Trial, error: BaseException) -> None:
        from optuna.trial import TrialState

        trial.set_user_attr("error", f"{type(error).__name__}: {error}")
        trial.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)

    # the loop -------------------------------------------------------------------------------------
    def run(
        self, progress: Callable[[int], None] | None = None, should_stop: Callable[[], bool] | None = None
    ) -> SearchResult:
        """Ask, evaluate and tell until `n_trials` trials are finished; an evaluation error stops it.

        The loop asks and tells a copy of the study in memory and stores each finished trial whole, in
        one transaction, in trial order (optimizer.trial_rows): an RDB storage otherwise commits every
        parameter, attribute, ask and tell on its own (about ten commits a trial, 40 ms on SQLite,
        against 2 ms in memory and a 1 ms write). A crash loses only the trials that had not finished.
        """
        from optuna.trial import TrialState

        finished = self._recover()
        if progress and finished:
            progress(min(finished, self.n_trials))
        remaining = self.n_trials - finished
        work = self._mirror()
        self._seed_points(finished, work)
        try:
            if remaining > 0:
                self._loop(work, remaining, progress, should_stop)
        finally:
            if work is not self.study:
                # trials left unfinished when the loop stopped on an error are failed, so the
                # finished ones after them can be written; a sampler's point is asked again next time
                for t in work.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    self._abandon_in(work, t, "left unfinished: the search stopped on an error")
                self._write_back(work)
        return self.result()

    # the copy in memory -----------------------------------------------------------------------------
    def _mirror(self) -> optuna.Study:
        """An in-memory study holding the stored study's trials under the same numbers."""
        import optuna

        if isinstance(self.study._storage, optuna.storages.InMemoryStorage):
            return self.study
        work = optuna.create_study(
            storage=optuna.storages.InMemoryStorage(),
            sampler=self.study.sampler,
            directions=self.study.directions,
            study_name=self.study.study_name,
        )
        stored = sorted(self.study.get_trials(deepcopy=False), key=lambda t: t.number)
        work.add_trials(stored)
        self._next_write = len(stored)  # the next trial to store; those below it are stored
        self._to_update = {t.number for t in stored if not t.state.is_finished()}
        return work

    def _write_back(self, work: optuna.Study) -> None:
        """Store the finished trials of `work` not stored yet, in number order without gaps."""
        if work is self.study:
            return
        trials = work.get_trials(deepcopy=False)
        for t in trials:
            if t.number in self._to_update and t.state.is_finished():
                self._update_stored(t)
                self._to_update.discard(t.number)
        new = []
        while self._next_write < len(trials) and trials[self._next_write].state.is_finished():
            new.append(trials[self._next_write])
            self._next_write += 1
        self._rows.write(new)

    def _update_stored(self, frozen: optuna.trial.FrozenTrial) -> None:
        """Finish in the stored study a trial that was waiting there (enqueued before this run)."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        storage = self.study._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(self.study._study_id, frozen.number)
        try:
            if storage.get_trial(trial_id).state == TrialState.WAITING:
                storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)
            for name, value in frozen.params.items():
                dist = frozen.distributions[name]
                storage.set_trial_param(trial_id, name, dist.to_internal_repr(value), dist)
            for key, value in frozen.user_attrs.items():
                storage.set_trial_user_attr(trial_id, key, value)
            for key, value in frozen.system_attrs.items():
                storage.set_trial_system_attr(trial_id, key, value)
            storage.set_trial_state_values(trial_id, state=frozen.state, values=frozen.values)
        except UpdateFinishedTrialError:
            log.warning("trial %d of %s was finished elsewhere", frozen.number, self.study.study_name)

    def _loop(self, work: optuna.Study, remaining: int, progress, should_stop) -> None:
        if self.config.parallel == 1:
            for _ in range(remaining):
                if should_stop and should_stop():
                    return
                trial = work.ask()
                try:
                    self._run_trial(trial, self._weights(trial))
                except BaseException as e:
                    self._fail(trial, e)
                    raise
                self._write_back(work)
                if progress:
                    progress(1)
            return
        in_flight: dict[Future, Any] = {}
        asked = 0
        with ThreadPoolExecutor(self.config.parallel, thread_name_prefix="soce-trial") as pool:
            while asked < remaining or in_flight:
                while (
                    asked < remaining
                    and len(in_flight) < self.config.parallel
                    and not (should_stop and should_stop())
                ):
                    trial = work.ask()
                    in_flight[pool.submit(self._run_trial, trial, self._weights(trial))] = trial
                    asked += 1
                if not in_flight:
                    return
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for fut in done:
                    trial = in_flight.pop(fut)
                    if (err := fut.exception()) is not None:
                        self._fail(trial, err)
                        for other in in_flight:
                            other.cancel()
                        for other, other_trial in in_flight.items():  # those already running end first
                            if not other.cancelled() and (other_err := other.exception()) is not None:
                                self._fail(other_trial, other_err)
                        raise err
                    if progress:
                        progress(1)
                self._write_back(work)

    # trials asked here and evaluated elsewhere ------------------------------------------------------
    def tally(self) -> tuple[int, list[optuna.trial.FrozenTrial]]:
        """The number of finished (complete or pruned) trials and the running ones, as stored now."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        )
        running = [t for t in trials if t.state == TrialState.RUNNING]
        return len(trials) - len(running), running

    def begin(self, stale: Callable[[optuna.trial.FrozenTrial], bool]) -> None:
        """Ready a stored study for asking: fail the running trials `stale` names, enqueue start points."""
        finished, running = self.tally()
        for t in running:
            if stale(t):
                self._abandon(t, "left running by a run that is over")
        self._seed_points(finished)

    def ask_trials(self, count: int, attrs: Mapping[str, Any] | None = None) -> list[int]:
        """Ask `count` trials to evaluate elsewhere; their numbers.

        Each trial's point is chosen now (the sampler's state lives with the study, not where the trial
        runs) and `attrs` are set on it.
        """
        numbers = []
        for _ in range(max(count, 0)):
            # a sampler made afresh in each process would draw the same "random" start point every
            # time: seed it by the study's size, so points differ and a rerun still asks the same ones
            size = len(self.study.get_trials(deepcopy=False))
            self.study.sampler = make_sampler(
                replace(self.config, seed=_seed_for(self.config.seed, size)), self.space
            )
            trial = self.study.ask()
            for key, value in (attrs or {}).items():
                trial.set_user_attr(key, value)
            self._weights(trial)
            numbers.append(trial.number)
        return numbers

    def _frozen(self, number: int) -> optuna.trial.FrozenTrial:
        storage = self.study._storage
        try:
            trial_id = storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        except KeyError:
            raise SearchError(f"study {self.study.study_name!r} has no trial {number}") from None
        return storage.get_trial(trial_id)

    def evaluate_trial(self, number: int, attrs: Mapping[str, Any] | None = None) -> bool:
        """Evaluate the running trial `number` and tell the study; False if it had finished already.

        Running it again after a crash is safe: the first tell wins, a later one changes nothing.
        An evaluation error fails the trial and is raised.
        """
        import optuna
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        frozen = self._frozen(number)
        if frozen.state != TrialState.RUNNING:
            return False
        self._load_finished()  # points already evaluated are reused, the bound for pruning is known
        try:
            trial = optuna.Trial(self.study, frozen._trial_id)
            for key, value in (attrs or {}).items():
                trial.set_user_attr(key, value)
            weights = self._weights(trial)
        except UpdateFinishedTrialError:
            return False
        try:
            self._run_trial(trial, weights)
        except UpdateFinishedTrialError:
            return False  # another delivery of the same trial told it first
        except BaseException as e:
            with contextlib.suppress(UpdateFinishedTrialError):  # told by another delivery
                self._fail(trial, e)
            raise
        return True

    def result(self) -> SearchResult:
        history = [_record(t, self.space) for t in self.study.get_trials(deepcopy=False)]
        history.sort(key=lambda r: r.number)
        complete = [r for r in history if r.state == "COMPLETE" and r.objective is not None]
        if not complete:
            raise SearchError(f"study {self.study.study_name!r} has no finished trial")
        best = max(complete, key=lambda r: (r.objective, -r.number))  # by mean, also for nsga2
        return SearchResult(
            study_name=self.study.study_name,
            sampler=self.config.sampler,
            space=self.space.name,
            n_trials=len([r for r in history if r.state in ("COMPLETE", "PRUNED")]),
            evaluations=sum(1 for r in history if r.evaluated and r.category_scores),
            best=best,
            history=history,
        )


def best_from_history(history: Sequence[TrialRecord]) -> TrialRecord | None:
    done = [
        r
        for r in history
        if r.state == "COMPLETE" and r.objective is not None and not math.isnan(r.objective)
    ]
    return max(done, key=lambda r: (r.objective, -r.number)) if done else None
