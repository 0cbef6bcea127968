"""The weight search of a job as trial tasks: up to `parallel_trials` trials at once on the gpu queue.

`soce.job.search` (the job is `searching`) names the study, readies it and asks the first trials;
each `soce.job.trial` evaluates one trial on its worker's resident soup, tells the study, then asks
the next trials while the budget allows. The task that finds every trial finished moves the job to
`finalizing` (a conditional update, so exactly one does) and sends `soce.job.finalize`. A cancelled
job asks no more trials: a trial already evaluating is told, one not yet started is failed.

Asking is decided under a lock per study (an advisory lock in the app database), so trial tasks that
finish together never ask more than `n_trials` trials, nor more than `parallel_trials` of a job at
once. Every asked trial names its job and who asked it (user attributes `job` and `asked_by`), which
is what makes crashes safe:
- a trial task killed mid-evaluation is delivered again and evaluates the same trial again (the
  first tell wins); killed after telling, its second delivery only asks the next trials;
- a task delivered again sends again the running trials it asked, whose messages may never have left;
- running trials of a job that is over (or asked by no job) are failed and their points asked again
  when a search on the study begins.

`soce run` runs these same tasks in its own process (workers.flow.run_job), so a study continued by
the service or by `soce run` asks the same trials.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache
from sqlalchemy import Engine, select, text, update

from soce.config import Settings
from soce.db import Job, session_scope
from soce.errors import JobCancelled, TrialFailed, is_transient
from soce.flow import FINISHED_STATES, JobState, TaskName
from workers.context import Context, Message, read_job, resident_soup, run_inputs
from workers.jobrows import JobProgress, error_message, fail_job, job_state, merge_json, move_job

if TYPE_CHECKING:
    import optuna

    from optimizer.search import WeightSearch
    from workers.pipeline import Analysis, RunInputs
    from workers.resident import ResidentSoup

log = logging.getLogger(__name__)

SEARCHING = JobState.SEARCHING
# True while workers.flow.run_job drives a job in this process (`soce run`): nothing else asks its
# trials, so its study is asked and told in memory and each finished trial stored whole
IN_PROCESS: contextvars.ContextVar[bool] = contextvars.ContextVar("soce_in_process", default=False)
BY_SEARCH = "search"  # `asked_by` of the trials the search task asks; trial tasks put their number


def open_search(ctx: Context, inputs: RunInputs, resident: ResidentSoup) -> tuple[Analysis, WeightSearch]:
    """The job's experts and its study (created, or continued if stored); the study's name on the job."""
    from soce.db.optuna_storage import optuna_storage
    from workers.pipeline import analyse_step, weight_search

    # deterministic: the ingredients of the analyse step
    matrices = ctx.matrices()
    analysis = analyse_step(matrices.search, ctx.spec.recipe, whole=matrices.dev)
    storage = optuna_storage(ctx.settings)
    search = weight_search(inputs, analysis, resident, storage=storage, buffered=IN_PROCESS.get())
    name = search.study.study_name
    with session_scope(ctx.engine) as session:
        session.execute(
            update(Job)
            .where(Job.id == ctx.job_id, Job.study_name.is_distinct_from(name))
            .values(study_name=name)
        )
    return analysis, search


_in_process = threading.Lock()

PROGRESS_EVERY = 0.5  # seconds between writes of the search progress of a job run in this process
_progress_written: dict[int, float] = {}


@contextmanager
def study_lock(engine: Engine, study_name: str) -> Iterator[None]:
    """Decide a study's next trials one process at a time (PostgreSQL advisory lock; else in-process).

    The lock is a transaction's: it goes with the commit, or with the connection of a process that died.
    """
    if engine.dialect.name != "postgresql":
        with _in_process:
            yield
        return
    key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        yield


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# The last job's opened search in this process: its trials on this worker (or in `soce run`) find the
# spec read, the experts resident and the study loaded. Keyed by the job row's identity and storage.
_opened: LRUCache = LRUCache(maxsize=1)
_opened_lock = threading.Lock()


def _job_row(engine: Engine, job_id: int) -> tuple[str | None, Any]:
    """The job's state and creation time (which tells a job from another with the same id)."""
    with session_scope(engine) as session:
        row = session.execute(select(Job.state, Job.created_at).where(Job.id == job_id)).first()
    return (row[0], row[1]) if row is not None else (None, None)


def open_job_search(
    engine: Engine, settings: Settings, job_id: int, created: Any = None
) -> tuple[Context, Analysis, WeightSearch]:
    """The job's context, analysis and study, opened once per process and job (see `_opened`)."""
    if created is None:
        _, created = _job_row(engine, job_id)
    url = engine.url.render_as_string(hide_password=False)
    key = (url, job_id, created, settings.optuna_url(), IN_PROCESS.get())
    with _opened_lock:
        found = _opened.get(key)
        if found is not None:
            return found
        spec = read_job(engine, job_id, settings)
        ctx = Context(engine, settings, job_id, spec, JobProgress(engine, job_id))
        inputs = run_inputs(ctx.spec, settings)
        resident = resident_soup(inputs, settings)
        analysis, search = open_search(ctx, replace(inputs, evaluator=resident.evaluator), resident)
        _opened[key] = (ctx, analysis, search)
        return ctx, analysis, search


def forget_opened() -> None:
    """Drop the opened search (tests; a process that changes its settings)."""
    with _opened_lock:
        _opened.clear()


def _guarded(engine: Engine, job_id: int, what: str, body: Callable[[], list[Message]]) -> list[Message]:
    """Run `body`; an error fails the job with `what` in front (unless the job was cancelled)."""
    try:
        return body()
    except JobCancelled:
        log.info("job %d: cancelled during %s", job_id, what)
        return []
    except Exception as e:
        if is_transient(e):  # a retry can cure it: the task runs again (workers.flow.run_task)
            raise
        if job_state(engine, job_id) == JobState.CANCELLED:
            log.info("job %d: cancelled during %s (%s)", job_id, what, error_message(e))
            return []
        log.exception("job %d: %s failed", job_id, what)
        fail_job(engine, job_id, f"{what}: {error_message(e)}")
        return []


def _stale(engine: Engine, job_id: int) -> Callable[[optuna.trial.FrozenTrial], bool]:
    """Whether a running trial will never be told: its job is over, or no job asked it."""

    def stale(trial: optuna.trial.FrozenTrial) -> bool:
        owner = trial.user_attrs.get("job")
        if owner == job_id:
            return False
        if owner is None:
            return True  # a `soce run` in-process search that stopped
        return job_state(engine, int(owner)) in (None, *FINISHED_STATES)

    return stale


def _ask(
    ctx: Context, search: WeightSearch, asked_by: int | str
) -> tuple[list[int], int, list[tuple[int, Any]]]:
    """Under the study lock: ask what the budget allows.

    Returns the new trial numbers, the finished count and this job's running trials as (number,
    asked_by).
    """
    finished, running = search.tally()
    for t in [t for t in running if "job" not in t.user_attrs]:
        # asking is decided under this lock, so a running trial naming no job was left by an attempt
        # that stopped between asking it and naming its job (a killed query): nobody will evaluate it
        reason = "asked by an attempt that stopped before naming its job"
        search.trials.fail(t.number, reason, ask_again=False)
        running.remove(t)
    mine = [
        (t.number, t.user_attrs.get("asked_by")) for t in running if t.user_attrs.get("job") == ctx.job_id
    ]
    parallel, budget = ctx.spec.recipe.parallel_trials, search.n_trials
    count = min(parallel - len(mine), budget - finished - len(running))
    if not mine and finished < budget:
        count = max(count, 1)  # another job's trials on the same study must not leave this one idle
    asked = search.ask_trials(count, {"job": ctx.job_id, "asked_by": asked_by})
    mine += [(n, asked_by) for n in asked]
    last = _progress_written.get(ctx.job_id, 0.0)
    throttled = IN_PROCESS.get() and time.monotonic() - last < PROGRESS_EVERY  # `soce run`'s short trials
    if finished >= budget or not mine or not throttled:
        done = {"done": min(finished, budget), "total": budget, "unit": "trial", "running": len(mine)}
        merge_json(ctx.engine, ctx.job_id, "progress", {"search": done})
        _progress_written[ctx.job_id] = time.monotonic()
    return asked, finished, mine


def _next(
    ctx: Context,
    search: WeightSearch,
    asked_by: int | str,
    *,
    asked: list[int],
    finished: int,
    mine: list[tuple[int, Any]],
    redelivered: bool,
) -> list[Message]:
    """The trial tasks to send, or finalize once every trial is finished."""
    if finished >= search.n_trials and not mine:
        return _finish(ctx, search, asked_by)
    numbers = set(asked)
    if redelivered:  # the first delivery may have asked these and died before sending them
        numbers |= {n for n, by in mine if by == asked_by}
    return [Message(TaskName.TRIAL, (ctx.job_id, n)) for n in sorted(numbers)]


def _finish(ctx: Context, search: WeightSearch, asked_by: int | str) -> list[Message]:
    """searching -> finalizing with the search's summary, if no other task did it first."""
    result = search.result()
    starts = [
        t.datetime_start
        for t in search.study.get_trials(deepcopy=False)
        if t.user_attrs.get("job") == ctx.job_id and t.datetime_start is not None
    ]
    now = datetime.now()  # Optuna's start times are naive local times
    analysis, timings = ctx.stored()
    analysis["search"] = {
        "study": result.study_name,
        "n_trials": result.n_trials,
        "evaluations": result.evaluations,
        "best_trial": result.best.number,
        "best_dev_objective": result.best.objective,
        **(result.best.weights.as_dict() if result.best.weights else {}),
        "finished_by": asked_by,
    }
    started = min(starts) if starts else None
    timings["search"] = max((now - started).total_seconds(), 0.0) if started else 0.0
    if result.sampler == "learned":  # the gradient path ran before the first trial, once per study
        path = search.learned_path().summary()
        analysis["search"]["learned"] = path
        timings["learn"] = path["seconds"]
    if move_job(
        ctx.engine,
        ctx.job_id,
        from_state=SEARCHING,
        to_state=JobState.FINALIZING,
        analysis=analysis,
        timings=timings,
    ):
        log.info("job %d: %d trials finished; finalizing", ctx.job_id, result.n_trials)
        return [Message(TaskName.FINALIZE, (ctx.job_id,))]
    return []


def _after_search(
    engine: Engine, job_id: int, asked_by: int | str, state: str | None, redelivered: bool
) -> list[Message]:
    """A task for a job no longer searching: send finalize again if it was the one that moved it on."""
    if state == JobState.FINALIZING and redelivered:
        with session_scope(engine) as session:
            job = session.get(Job, job_id)
            by = ((job.analysis or {}).get("search") or {}).get("finished_by") if job else None
        if by == asked_by:
            log.warning("job %d: %s redelivered after moving the job on; sending finalize again", job_id, by)
            return [Message(TaskName.FINALIZE, (job_id,))]
    log.info("job %d is %s; %s has nothing to do", job_id, state or "missing", asked_by)
    return []


def start_search(job_id: int, *, redelivered: bool, settings: Settings, engine: Engine) -> list[Message]:
    """The search task: ready the job's study and send its first trials (finalize if none are left)."""
    state = job_state(engine, job_id)
    if state != SEARCHING:
        return _after_search(engine, job_id, BY_SEARCH, state, redelivered)

    def body() -> list[Message]:
        ctx, _, search = open_job_search(engine, settings, job_id)
        with study_lock(engine, search.study.study_name):
            search.begin(_stale(engine, job_id))
            asked, finished, mine = _ask(ctx, search, BY_SEARCH)
        log.info("job %d: study %s, trials %s asked", job_id, search.study.study_name, asked)
        return _next(
            ctx, search, BY_SEARCH, asked=asked, finished=finished, mine=mine, redelivered=redelivered
        )

    return _guarded(engine, job_id, "search", body)


def run_trial(
    job_id: int, number: int, *, redelivered: bool, settings: Settings, engine: Engine
) -> list[Message]:
    """A trial task: evaluate trial `number` of the job's study, tell it, send what comes next."""
    state, created = _job_row(engine, job_id)
    if state != SEARCHING:
        if state is not None and state != JobState.FINALIZING:
            _give_up(engine, settings, job_id, number, state)
        return _after_search(engine, job_id, number, state, redelivered)

    def body() -> list[Message]:
        ctx, _, search = open_job_search(engine, settings, job_id, created)
        try:
            evaluated = search.evaluate_trial(number, {"worker": _worker()})
        except Exception as e:
            raise TrialFailed(f"trial {number}: {error_message(e)}") from e
        log.info("job %d: trial %d %s", job_id, number, "told" if evaluated else "had finished already")
        with study_lock(engine, search.study.study_name):
            if job_state(engine, job_id) != SEARCHING:  # cancelled meanwhile: no more trials
                return []
            asked, finished, mine = _ask(ctx, search, number)
        return _next(ctx, search, number, asked=asked, finished=finished, mine=mine, redelivered=redelivered)

    return _guarded(engine, job_id, "search", body)


def _give_up(engine: Engine, settings: Settings, job_id: int, number: int, state: str) -> None:
    """The job is over: its trial is not evaluated, and fails if it is still running."""
    import optuna

    from optimizer.trial_store import TrialStore
    from soce.db.optuna_storage import optuna_storage

    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        name = job.study_name if job else None
        sampler = (job.recipe or {}).get("sampler") if job else None
    if not name:
        return
    try:
        storage = optuna_storage(settings)
        study = optuna.load_study(study_name=name, storage=storage)
        TrialStore(study, storage).fail(number, f"job {job_id} is {state}", ask_again=sampler != "grid")
    except Exception as e:  # the trial stays running; the next search on the study recovers it
        log.warning("job %d: trial %d of %s not marked failed: %s", job_id, number, name, error_message(e))
