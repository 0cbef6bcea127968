"""Weight search with Optuna: the paper's grid, TPE, CMA-ES, NSGA-II and the learned soup over soup weights.

Evaluation arrives as a callable (weights, categories) -> {category: dev score}; this module never
touches a model. Trials are asked and told one by one, so a study in any Optuna storage can be
stopped and continued: finished trials are never run again, a trial left running by a crash is
marked failed and its point asked again first. A point that rounds to weights already evaluated in
the study reuses that result instead of evaluating again.

There is one way of driving a study, wherever its trials run (see WeightSearch): the service's trial
tasks and `soce run` ask and evaluate trials through it, with one seeding policy, so a study
continued by either asks the same trials.

The learned soup's gradient path arrives as a callable too (`learn`: space -> LearnedPath), run once
per study where the search begins; its checkpoints are enqueued as trials and evaluated as any other.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from optimizer.learned import LEARNED_ATTR, LEARNED_PARAM, LearnedPath
from optimizer.records import SearchResult, objective_of, record
from optimizer.samplers import SearchConfig, make_sampler, seed_for
from optimizer.space import SearchSpace, SoupWeights, grid_points
from optimizer.trial_store import TrialStore, use_sampler
from soce.errors import SearchError

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

Evaluate = Callable[[SoupWeights, Sequence[str]], Mapping[str, float]]
Learn = Callable[[SearchSpace], LearnedPath]


class WeightSearch:
    """One study: its sampler, space and evaluation; one way of driving it, wherever trials run.

    `begin()` readies the study (fails the running trials nobody will finish, enqueues the start
    points); `ask_trials()` asks the next trials where they are decided (the caller serialises the
    asking); `evaluate_trial(number)` evaluates a trial where it runs and tells the study (telling
    twice is a no-op); `tally()` says what is finished and what runs. The service's trial tasks and
    `soce run` (workers.trials) call these; `run()` is the same loop in this process, for library use.
    """

    def __init__(
        self,
        space: SearchSpace,
        categories: Sequence[str],
        evaluate: Evaluate,
        config: SearchConfig,
        *,
        storage: str | optuna.storages.BaseStorage | None,
        study_name: str,
        buffered: bool = False,
        learn: Learn | None = None,
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
        if storage is None:
            storage = optuna.storages.InMemoryStorage()
        elif isinstance(storage, str):
            storage = optuna.storages.RDBStorage(storage)
        self.storage = storage
        try:
            self.study = optuna.create_study(
                study_name=study_name,
                storage=self.storage,
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
        self.stored = self.study  # the study in `storage`; `study` is a copy in memory when buffered
        self.trials = TrialStore(self.study, self.storage)
        self._lock = threading.Lock()
        self._known: dict[tuple, tuple[int, dict[str, float]]] = {}
        self._best: float | None = None
        self._buffering = buffered
        self._written: int | None = None  # buffered: the trials below this number are stored
        self._writer: ThreadPoolExecutor | None = None
        self._writes: list[Future] = []
        self._learn = learn
        self._learned: LearnedPath | None = None

    # bookkeeping -------------------------------------------------------------------------------
    def _objective(self, scores: Mapping[str, float]) -> float:
        return objective_of(scores, self.categories, self.config.category_weights)

    def _load_finished(self) -> int:
        """Remember the finished trials' points and the best objective; how many trials are finished."""
        from optuna.trial import TrialState

        finished = 0
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            finished += 1
            if t.state == TrialState.COMPLETE and "category_scores" in t.user_attrs:
                rec = record(t, self.space)
                with self._lock:
                    if rec.weights is not None:
                        self._known.setdefault(rec.weights.key(), (t.number, rec.category_scores))
                    if rec.objective is not None:
                        self._best = rec.objective if self._best is None else max(self._best, rec.objective)
        return finished

    def abandon(self, number: int, reason: str) -> bool:
        """Fail running trial `number`, which nobody will finish; a sampler's point is asked again (grid
        points are enqueued once, by the start points); whether it was running."""
        failed = self.trials.fail(number, reason, ask_again=self.config.sampler != "grid")
        self._store_finished()
        return failed

    def _seed_points(self, finished: int) -> None:
        """Enqueue the points every search starts from (none are enqueued twice)."""
        if finished >= self.n_trials:
            return
        if self.config.sampler == "grid":
            # every point once, in a seeded order; points already in the study are not enqueued again
            order = list(range(len(grid_points(self.space.k))))
            random.Random(self.config.seed).shuffle(order)
            for idx in order[: self.n_trials]:
                self.study.enqueue_trial({"grid_point": idx}, skip_if_exists=True)
        elif self.config.sampler == "learned":
            self._enqueue_learned()
        elif finished == 0:
            # start from the uniform soup: a strong, known point that every sampler should beat
            self.study.enqueue_trial(
                self.space.params_for([1.0 / self.space.k] * self.space.k), skip_if_exists=True
            )

    def learned_path(self) -> LearnedPath:
        """The learned soup's gradient path: stored with the study, else computed now and stored."""
        if self._learned is None:
            stored = self.stored.user_attrs.get(LEARNED_ATTR)
            if stored is not None:
                self._learned = LearnedPath.from_dict(stored)
            elif self._learn is None:
                raise SearchError(
                    f"study {self.stored.study_name!r} has no learned path and this search cannot compute one"
                )
            else:
                path = self._learn(self.space)
                self.stored.set_user_attr(LEARNED_ATTR, path.as_dict())  # stored: every asker reads it
                self._learned = path
        return self._learned

    def _enqueue_learned(self) -> None:
        """Enqueue the learned path's checkpoints that no trial holds (a failed one's point goes again)."""
        from optuna.trial import TrialState

        path = self.learned_path()
        taken = set()
        for t in self.study.get_trials(deepcopy=False):
            if t.state != TrialState.FAIL:
                fixed = t.system_attrs.get("fixed_params") or {}
                taken.add(t.params.get(LEARNED_PARAM, fixed.get(LEARNED_PARAM)))
        for i, step in enumerate(path.checkpoints(self.n_trials)):
            if i not in taken:
                self.study.enqueue_trial({LEARNED_PARAM: i, **self.space.params_of(path.soup(step))})

    def _suggest(self, trial: optuna.Trial) -> SoupWeights:
        if self.config.sampler == "grid":
            points = grid_points(self.space.k)
            idx = trial.suggest_categorical("grid_point", list(range(len(points))))
            return SoupWeights(self.space.experts, tuple(points[int(idx)]))
        if self.config.sampler == "learned":
            idx = int(trial.suggest_int(LEARNED_PARAM, 0, max(self.n_trials - 1, 0)))
            weights = self.space.suggest(trial)
            path = self.learned_path()
            steps = path.checkpoints(self.n_trials)
            if idx < len(steps) and _same(path.soup(steps[idx]), weights):
                step = steps[idx]  # an enqueued point (not one the fallback sampler drew): say where from
                trial.set_user_attr("learned", {"step": step, "loglik": path.loglik[step]})
            return weights
        return self.space.suggest(trial)

    # asking --------------------------------------------------------------------------------------
    def tally(self) -> tuple[int, list[optuna.trial.FrozenTrial]]:
        """The number of finished (complete or pruned) trials and the running ones, as stored now."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        )
        running = [t for t in trials if t.state == TrialState.RUNNING]
        return len(trials) - len(running), running

    def begin(self, stale: Callable[[optuna.trial.FrozenTrial], bool]) -> None:
        """Ready the study for asking: fail the running trials `stale` names, enqueue the start points.

        A search made `buffered` then asks, evaluates and tells in a copy of the study in memory, and
        stores each finished trial whole, in trial order, in one call (`Study.add_trial`): on an RDB
        storage each ask, parameter, attribute and tell is otherwise a commit of its own, which costs
        more than evaluating a tiny model. Only a study driven by one process may be buffered (`soce
        run`, the library's `run()`): its running trials live in that process. A stored study that
        still has trials running or waiting for another process is not buffered.
        """
        finished, running = self.tally()
        again = []
        for t in running:
            if stale(t) and self.trials.fail(
                t.number,
                "left running by a run that is over",
                ask_again=not self._buffering and self.config.sampler != "grid",
            ):
                again.append(t.params)
        if self._buffering:
            self._buffer()
            if self.config.sampler != "grid":
                for params in again:  # a sampler's point is asked again first
                    if params:
                        self.study.enqueue_trial(params)
        self._seed_points(finished)

    def _buffer(self) -> None:
        """Switch asking and telling to a copy of the stored study in memory (see `begin`)."""
        import optuna

        self._buffering = False
        stored = sorted(self.stored.get_trials(deepcopy=False), key=lambda t: t.number)
        unfinished = [t.number for t in stored if not t.state.is_finished()]
        if unfinished:
            log.info(
                "study %s: trials %s run or wait elsewhere; not buffered", self.stored.study_name, unfinished
            )
            return
        memory = optuna.storages.InMemoryStorage()
        self.study = optuna.create_study(
            storage=memory,
            sampler=self.stored.sampler,
            directions=self.stored.directions,
            study_name=self.stored.study_name,
        )
        self.study.add_trials(stored)
        self.trials = TrialStore(self.study, memory)
        self._written = len(stored)

    def _store_finished(self) -> None:
        """Buffered: hand the finished trials not stored yet, in number order without gaps, to the
        writer thread (storing a trial costs more than asking it; the next trial need not wait)."""
        if self._written is None:
            return
        with self._lock:
            trials = self.study.get_trials(deepcopy=False)
            batch = []
            while self._written < len(trials) and trials[self._written].state.is_finished():
                batch.append(trials[self._written])
                self._written += 1
            if batch:
                if self._writer is None:
                    self._writer = ThreadPoolExecutor(1, thread_name_prefix="soce-store")
                self._writes.append(self._writer.submit(self._add_trials, batch))

    def _add_trials(self, trials: list[optuna.trial.FrozenTrial]) -> None:
        for t in trials:
            self.stored.add_trial(t)  # one transaction: the whole trial, under the next number

    def flush(self) -> None:
        """Wait until every finished trial handed to the writer is stored; raise a write's error."""
        with self._lock:
            writes, self._writes = self._writes, []
        for w in writes:
            w.result()

    def ask_trials(self, count: int, attrs: Mapping[str, Any] | None = None) -> list[int]:
        """Ask `count` trials to evaluate (here or elsewhere); their numbers.

        Each trial's point is chosen now, by a sampler seeded with the recipe's seed and the study's
        size: whichever process asks, a study with the same trials asks the same next point, and a
        sampler made afresh does not draw the same "random" start point every time.
        """
        numbers: list[int] = []
        if count > 0 and self.config.sampler == "learned":
            self._enqueue_learned()  # each ask takes a point of the path while one is left
        size = len(self.study.get_trials(deepcopy=False)) if count > 0 else 0
        for _ in range(max(count, 0)):
            sampler = make_sampler(replace(self.config, seed=seed_for(self.config.seed, size)), self.space)
            use_sampler(self.study, sampler)
            trial = self.study.ask()
            size = max(size, trial.number + 1)  # a new trial, unless an enqueued one was asked
            for key, value in (attrs or {}).items():
                trial.set_user_attr(key, value)
            self._suggest(trial)
            numbers.append(trial.number)
        return numbers

    # one trial -------------------------------------------------------------------------------------
    def evaluate_trial(self, number: int, attrs: Mapping[str, Any] | None = None) -> bool:
        """Evaluate the running trial `number` and tell the study; False if it had finished already.

        Running it again after a crash is safe: the first tell wins, a later one changes nothing.
        An evaluation error fails the trial and is raised.
        """
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        frozen = self.trials.get(number)
        if frozen.state != TrialState.RUNNING:
            return False
        self._load_finished()  # points already evaluated are reused, the bound for pruning is known
        try:
            weights = self.space.from_params(frozen.params)
        except (KeyError, IndexError):  # the process asking it stopped between two of its parameters
            self.trials.fail(number, "asked without all its parameters: the asker stopped", ask_again=False)
            self._store_finished()
            return False
        given = {**(attrs or {}), "weights": dict(zip(weights.experts, weights.weights, strict=True))}
        if weights.groups:
            given["layer_weights"] = {g: list(w) for g, w in weights.groups.items()}
        try:
            self.trials.set_attrs(number, given)
        except UpdateFinishedTrialError:
            return False  # another delivery of the same trial told it first
        try:
            state, values, results = self._evaluate(number, weights)
        except BaseException as e:
            with contextlib.suppress(UpdateFinishedTrialError, ValueError):  # told by another delivery
                self.trials.set_attrs(number, {"error": f"{type(e).__name__}: {e}"})
                self.study.tell(number, state=TrialState.FAIL)
            self._store_finished()
            raise
        try:
            self.trials.set_attrs(number, results)
        except UpdateFinishedTrialError:
            return False
        self.study.tell(number, values, state=state, skip_if_finished=True)
        self._store_finished()
        return True

    def _evaluate(self, number: int, weights: SoupWeights) -> tuple[Any, Any, dict[str, Any]]:
        """Scores of `weights` (reused when the study evaluated them before): (state, values, attrs)."""
        from optuna.trial import TrialState

        started = time.perf_counter()
        with self._lock:
            known = self._known.get(weights.key())
        timings: dict[str, float] = {}
        scores: dict[str, float] = {}
        attrs: dict[str, Any] = {}
        pruned = False
        if known is not None:
            attrs["reused_from"] = known[0]
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
        timings["total"] = time.perf_counter() - started
        attrs.update(category_scores=scores, timings=timings)
        if pruned:
            attrs["pruned_after"] = list(scores)
            return TrialState.PRUNED, None, attrs
        objective = self._objective(scores)
        attrs["objective"] = objective
        with self._lock:
            self._known.setdefault(weights.key(), (number, scores))
            self._best = objective if self._best is None else max(self._best, objective)
        values: float | list[float] = [scores[c] for c in self.categories] if self.multi else objective
        return TrialState.COMPLETE, values, attrs

    # the loop in this process ----------------------------------------------------------------------
    def run(
        self, progress: Callable[[int], None] | None = None, should_stop: Callable[[], bool] | None = None
    ) -> SearchResult:
        """Ask, evaluate and tell in this process until `n_trials` trials are finished (up to `parallel`
        at once, in threads); an evaluation error stops it and is raised.

        The study is driven by this process alone: a trial found running was left by one that stopped,
        and is failed with its point asked again first.
        """
        self.begin(lambda _: True)  # nothing else drives this study: a running trial was left over
        finished = self._load_finished()
        if progress and finished:
            progress(min(finished, self.n_trials))
        remaining = self.n_trials - finished
        stop = should_stop or (lambda: False)
        if self.config.parallel == 1:  # in this thread: no pool to hand each evaluation to
            for _ in range(remaining):
                if stop():
                    break
                (number,) = self.ask_trials(1)
                self.evaluate_trial(number)  # an error fails the trial and is raised
                if progress:
                    progress(1)
            return self.result()
        in_flight: dict[Future, int] = {}
        asked = 0
        with ThreadPoolExecutor(self.config.parallel, thread_name_prefix="soce-trial") as pool:
            try:
                while asked < remaining or in_flight:
                    while asked < remaining and len(in_flight) < self.config.parallel and not stop():
                        (number,) = self.ask_trials(1)
                        in_flight[pool.submit(self.evaluate_trial, number)] = number
                        asked += 1
                    if not in_flight:
                        break
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    for fut in done:
                        in_flight.pop(fut)
                        fut.result()  # raises the evaluation's error; the trial is failed already
                        if progress:
                            progress(1)
            finally:
                for fut, number in in_flight.items():  # on an error: the others end, or never start
                    if fut.cancel():
                        self.abandon(number, "never evaluated: the search stopped on an error")
                    else:
                        with contextlib.suppress(BaseException):
                            fut.result()
        return self.result()

    def result(self) -> SearchResult:
        self.flush()
        history = [record(t, self.space) for t in self.study.get_trials(deepcopy=False)]
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


def _same(a: SoupWeights, b: SoupWeights, tol: float = 1e-9) -> bool:
    """Whether two weightings are equal up to float error (a stick-breaking round trip)."""
    if bool(a.groups) != bool(b.groups):
        return False
    pairs = [(a.weights, b.weights)]
    if a.groups and b.groups:
        if set(a.groups) != set(b.groups):
            return False
        pairs += [(a.groups[g], b.groups[g]) for g in a.groups]
    return all(abs(x - y) <= tol for u, v in pairs for x, y in zip(u, v, strict=True))
