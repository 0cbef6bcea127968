"""Jobs whose next message was lost: found by how long they went without progress, and sent again.

Celery on Redis redelivers a task whose worker died (acks_late), but a message that never reached
Redis, or that Redis lost (a restart without persistence, a flushed database), leaves its job in an
active state for ever. Beat sends `soce.jobs.sweep` every few minutes; a job that is not finished and
whose row has not changed for `job_stall_seconds` (default: the visibility timeout, after which Redis
would have redelivered any task it still had) gets the task of its state sent again:

- queued, scoring, analysing, finalizing: that step's task (steps run again safely: a step whose job
  has moved on does nothing);
- searching: a trial task for each of the job's running trials (evaluated again or, if told already,
  only asking the next), or the search task when none runs (it asks trials, or finalizes).

The sweep records what it sent in the job's progress (`sweep`) and touches the row, so a job is sent
again at most once per stall period; an advisory lock lets one sweep at a time decide.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, text

from soce.config import Settings
from soce.db import Job, session_scope
from soce.flow import ACTIVE_STATES, JobState, TaskName
from workers.flow import BY_STATE

log = logging.getLogger(__name__)

SWEEP_LOCK = 0x50CE_5EEE  # the advisory lock key of the sweep

Send = Callable[[str, list[int]], None]


def running_trials(settings: Settings, study_name: str, job_id: int) -> list[int]:
    """Numbers of the job's trials that run in its study (asked, never told)."""
    import optuna
    from optuna.trial import TrialState

    from soce.db.optuna_storage import optuna_storage

    try:
        study = optuna.load_study(study_name=study_name, storage=optuna_storage(settings))
    except KeyError:  # the search task named the study and died before creating it
        return []
    trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return sorted(t.number for t in trials if t.user_attrs.get("job") == job_id)


Messages = list[tuple[str, list[int]]]


def messages_for(settings: Settings, job_id: int, state: str, study_name: str | None) -> Messages:
    """The tasks that take a job in `state` on from where it stopped (workers.flow's table)."""
    if state == JobState.SEARCHING:
        numbers = running_trials(settings, study_name, job_id) if study_name else []
        if numbers:
            return [(TaskName.TRIAL, [job_id, n]) for n in numbers]
        return [(TaskName.SEARCH, [job_id])]
    if state in BY_STATE:
        return [(BY_STATE[state].task, [job_id])]
    return []


def sweep(
    engine: Engine, now: datetime, *, settings: Settings, send: Send, stall_seconds: float | None = None
) -> list[tuple[int, str]]:
    """Send again the tasks of the jobs stalled at `now`; (job id, task) for each message sent."""
    stall = float(stall_seconds if stall_seconds is not None else settings.stall_seconds())
    cutoff = now - timedelta(seconds=stall)
    sent: list[tuple[int, str]] = []
    to_send: Messages = []
    with session_scope(engine) as session:
        postgres = session.get_bind().dialect.name == "postgresql"
        if postgres:
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SWEEP_LOCK})
        query = select(Job).where(Job.state.in_(ACTIVE_STATES), Job.updated_at < cutoff).order_by(Job.id)
        if postgres:
            query = query.with_for_update(of=Job, skip_locked=True)  # a step committing now keeps its row
        for job in session.scalars(query).all():
            try:
                messages = messages_for(settings, job.id, job.state, job.study_name)
            except Exception as e:  # an unreachable Optuna database must not stop the other jobs
                log.warning("sweep: job %d (%s) stalled; its trials cannot be read: %s", job.id, job.state, e)
                continue
            to_send.extend(messages)
            sent.extend((job.id, task) for task, _ in messages)
            idle = (now - job.updated_at).total_seconds()
            previous: dict[str, Any] = (job.progress or {}).get("sweep") or {}
            sent_names = [f"{task}{tuple(args)}" for task, args in messages]
            job.progress = {
                **(job.progress or {}),
                "sweep": {
                    "count": int(previous.get("count", 0)) + 1,
                    "at": now.isoformat(),
                    "state": job.state,
                    "sent": sent_names,
                    "idle_seconds": round(idle, 1),
                },
            }
            job.updated_at = now  # the next sweep waits a whole stall period again
            log.warning(
                "job %d: no progress in %s for %.0f s; sent again: %s",
                job.id,
                job.state,
                idle,
                ", ".join(sent_names),
            )
    for task, args in to_send:  # after the commit: a task that starts now sees the row as updated
        send(task, args)
    return sent
