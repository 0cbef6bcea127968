"""A job's states, top-down: for each state its task, its step and the state that follows.

    queued --start--> scoring --score--> analysing --analyse--> searching --(search, trials)-->
    finalizing --finalize--> done;  any state --> failed (an error that would happen again),
    or cancelled (by the API)

Every task re-reads the job, runs only in the state it belongs to, commits, and names the tasks to
send next; the caller sends them after the commit (Celery in workers.tasks; this process in
`run_job`, which `soce run` and `soce demo` use on the embedded databases). While the job is
`searching`, its trials run as separate trial tasks (workers.trials); the last one to finish moves it
to `finalizing`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from soce.config import Settings, get_settings
from soce.db import get_engine
from soce.errors import JobCancelled, is_transient
from soce.flow import JobState, TaskName
from workers import steps, trials
from workers.context import Context, Message, read_job
from workers.jobrows import JobProgress, error_message, fail_job, heartbeat, job_state, move_job
from workers.progress import Stages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class State:
    """An active state: the task that runs its step, the step, and the state the job moves to."""

    state: JobState
    task: TaskName
    step: Callable[[Context], dict[str, Any]] | None  # None: the search, driven by trial tasks
    next_state: JobState


STATES: tuple[State, ...] = (
    State(JobState.QUEUED, TaskName.START, steps.start, JobState.SCORING),
    State(JobState.SCORING, TaskName.SCORE, steps.score, JobState.ANALYSING),
    State(JobState.ANALYSING, TaskName.ANALYSE, steps.analyse, JobState.SEARCHING),
    State(JobState.SEARCHING, TaskName.SEARCH, None, JobState.FINALIZING),
    State(JobState.FINALIZING, TaskName.FINALIZE, steps.finalize, JobState.DONE),
)
BY_STATE: dict[str, State] = {s.state: s for s in STATES}
BY_TASK: dict[str, State] = {s.task: s for s in STATES}


def run_step(
    task: str,
    job_id: int,
    *,
    redelivered: bool = False,
    settings: Settings | None = None,
    engine: Engine | None = None,
    display: Stages | None = None,
) -> str | None:
    """Run one step of a job if the job is in its state; the task to send next (after this commit).

    A redelivered message for a job already past this step sends the next step again: the worker that
    ran it may have died between its commit and its send (the next step is idempotent).
    """
    settings = settings or get_settings()
    engine = engine or get_engine(settings.app_database_url())
    here = BY_TASK[task]
    assert here.step is not None, f"{task} is not a step"
    following = BY_STATE[here.next_state].task if here.next_state in BY_STATE else None
    state = job_state(engine, job_id)
    if state != here.state:
        if state == here.next_state and redelivered and following:
            log.warning("job %d: %s redelivered after its commit; sending %s again", job_id, task, following)
            return following
        log.info("job %d is %s; %s has nothing to do", job_id, state or "missing", task)
        return None
    progress = JobProgress(engine, job_id, display=display)
    try:
        spec = read_job(engine, job_id, settings)
        values = here.step(Context(engine, settings, job_id, spec, progress))
    except JobCancelled:
        log.info("job %d: cancelled during %s", job_id, task)
        return None
    except Exception as e:
        if is_transient(e):  # a retry can cure it: the task runs again, the job goes on
            raise
        if progress.cancelled():  # whatever broke, the job was cancelled: that is its outcome
            log.info("job %d: cancelled during %s (%s)", job_id, task, error_message(e))
            return None
        log.exception("job %d: %s failed", job_id, task)
        fail_job(engine, job_id, f"{task.removeprefix('soce.job.')}: {error_message(e)}")
        return None
    if not move_job(engine, job_id, from_state=here.state, to_state=here.next_state, **values):
        log.info("job %d left %s while %s ran (now %s)", job_id, here.state, task, job_state(engine, job_id))
        return None
    return following


def run_task(
    task: str,
    args: Sequence[int],
    *,
    redelivered: bool = False,
    settings: Settings | None = None,
    engine: Engine | None = None,
    display: Stages | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Message]:
    """Run the task `task` of a job (args: job id, then a trial number); the messages to send next.

    An error a retry can cure (soce.errors.is_transient: a connection lost, a server restarting) does
    not fail the job: the task runs again after each of `settings.transient_retry_seconds`, as a
    redelivery (its steps are idempotent; a trial left running is evaluated again), and the error is
    raised once they are spent (Celery then retries the task later; the sweep sends it again).
    """
    settings = settings or get_settings()
    engine = engine or get_engine(settings.app_database_url())
    delays = list(settings.transient_retry_seconds)
    # a worker proves it is alive while it runs the task; in-process (`soce run`) nothing watches
    beating = nullcontext() if trials.IN_PROCESS.get() else None
    for attempt in range(len(delays) + 1):
        try:
            with beating or heartbeat(engine, int(args[0]), settings.job_heartbeat_seconds):
                return _run_task_once(
                    task,
                    args,
                    redelivered=redelivered or attempt > 0,
                    settings=settings,
                    engine=engine,
                    display=display,
                )
        except Exception as e:
            if not is_transient(e) or attempt == len(delays):
                raise
            log.warning(
                "%s%s met an error a retry can cure (%s); running it again in %.0f s",
                task,
                tuple(args),
                error_message(e),
                delays[attempt],
            )
            sleep(delays[attempt])
    raise AssertionError("unreachable")


def _run_task_once(
    task: str,
    args: Sequence[int],
    *,
    redelivered: bool,
    settings: Settings,
    engine: Engine,
    display: Stages | None,
) -> list[Message]:
    job_id = int(args[0])
    if task == TaskName.SEARCH:
        return trials.start_search(job_id, redelivered=redelivered, settings=settings, engine=engine)
    if task == TaskName.TRIAL:
        return trials.run_trial(
            job_id, int(args[1]), redelivered=redelivered, settings=settings, engine=engine
        )
    following = run_step(
        task, job_id, redelivered=redelivered, settings=settings, engine=engine, display=display
    )
    return [Message(following, (job_id,))] if following else []


def run_job(
    job_id: int,
    *,
    settings: Settings | None = None,
    engine: Engine | None = None,
    display: Stages | None = None,
) -> str | None:
    """Every task of a job in this process, one at a time in the order sent (embedded mode); its state.

    `display` shows each stage's progress (the search's as trials finish) and the steps' notes.
    """
    settings = settings or get_settings()
    engine = engine or get_engine(settings.app_database_url())
    display = display or Stages(quiet=True)
    pending = deque([Message(BY_STATE[JobState.QUEUED].task, (job_id,))])
    token = trials.IN_PROCESS.set(True)
    try:
        with SearchBar(engine, job_id, display) as bar:
            while pending:
                message = pending.popleft()
                pending.extend(
                    run_task(message.task, message.args, settings=settings, engine=engine, display=display)
                )
                if message.task in (TaskName.SEARCH, TaskName.TRIAL):
                    bar.update()
                else:
                    bar.close()
    finally:
        trials.IN_PROCESS.reset(token)
    return job_state(engine, job_id)


class SearchBar:
    """The search's progress bar for `run_job`: trials finished, as the trial tasks record them."""

    def __init__(self, engine: Engine, job_id: int, display: Stages) -> None:
        self.engine, self.job_id, self.display = engine, job_id, display
        self._stage: Any = None
        self._advance: Any = None
        self._shown = 0

    def __enter__(self) -> SearchBar:
        return self

    def update(self) -> None:
        from sqlalchemy import select

        from soce.db import Job, session_scope

        if self.display.quiet:  # nothing is shown: no need to read the job
            return
        with session_scope(self.engine) as session:  # two columns, not the row and its score matrices
            row = session.execute(select(Job.progress, Job.recipe).where(Job.id == self.job_id)).first()
        progress, recipe = row if row is not None else ({}, {})
        search = (progress or {}).get("search") or {}
        sampler = (recipe or {}).get("sampler", "tpe")
        done, total = int(search.get("done") or 0), search.get("total")
        if total is None:
            return
        if self._stage is None:
            self._stage = self.display.stage(f"search {sampler}", total=total, unit="trial")
            self._advance = self._stage.__enter__()
        if done > self._shown:
            self._advance(done - self._shown)
            self._shown = done

    def close(self, *exc: Any) -> None:
        if self._stage is not None:
            self._stage.__exit__(*(exc or (None, None, None)))
            self._stage = None

    def __exit__(self, *exc: Any) -> None:
        self.close(*exc)
