"""Jobs whose task was lost: no progress, no worker on them and no message waiting, sent again.

A job's task can be lost: a worker killed (its unacknowledged message waits for Redis's visibility
timeout, hours by default), Redis flushed or restarted without persistence, a retry that could not be
sent. Beat sends `soce.jobs.sweep` every 30 s to a cpu worker, which finds the active jobs whose row
has not changed and whose heartbeat (written every `job_heartbeat_seconds` by a worker running one of
their tasks) is older than `job_stall_seconds` (default 60 s), and that have no message waiting in the
broker's queues; each gets the task of its state sent again:

- queued, scoring, analysing, finalizing: that step's task (steps run again safely: a step whose job
  has moved on does nothing);
- searching: a trial task for each of the job's running trials (evaluated again or, if told already,
  only asking the next), or the search task when none runs (it asks trials, or finalizes).

With the defaults a lost task is sent again within about 90 s. A message that Redis later redelivers
as well only finds its work done: the first tell of a trial wins. The sweep records what it sent in
the job's progress (`sweep`) and touches the row, so a job is sent again at most once per stall
period; an advisory lock lets one sweep at a time decide, and the messages leave after its commit.
"""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, or_, select, text, true

from soce.config import Settings
from soce.db import Job, session_scope
from soce.flow import ACTIVE_STATES, QUEUES, JobState, TaskName
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
    engine: Engine,
    now: datetime,
    *,
    settings: Settings,
    send: Send,
    stall_seconds: float | None = None,
    queued: Callable[[], set[int] | None] | None = None,
) -> list[tuple[int, str]]:
    """Send again the tasks of the jobs stalled at `now`; (job id, task) for each message sent.

    queued: the ids of the jobs with a message waiting in the broker (`queued_jobs`); None from it
    (the broker cannot be read) sends nothing this time.
    """
    stall = float(stall_seconds if stall_seconds is not None else settings.stall_seconds())
    cutoff = now - timedelta(seconds=stall)
    waiting = queued() if queued is not None else set()
    if waiting is None:
        log.warning("sweep: the broker's queues cannot be read; nothing sent this time")
        return []
    sent: list[tuple[int, str]] = []
    to_send: Messages = []
    with session_scope(engine) as session:
        postgres = session.get_bind().dialect.name == "postgresql"
        if postgres:
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SWEEP_LOCK})
        query = (
            select(Job)
            .where(
                Job.state.in_(ACTIVE_STATES),
                Job.updated_at < cutoff,
                or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff),
                Job.id.not_in(waiting) if waiting else true(),
            )
            .order_by(Job.id)
        )
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


# the Redis lists kombu keeps a queue in: the queue's name, and one per priority step
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
JOB_TASKS = frozenset(s.task for s in BY_STATE.values()) | {TaskName.TRIAL}


def queued_jobs(broker_url: str, queues: tuple[str, ...] = QUEUES) -> set[int] | None:
    """Ids of the jobs with a task message waiting in the broker's queues; None if Redis cannot be read.

    A message a worker has taken is no longer in its queue: whether it still runs is the job's heartbeat.
    """
    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        found: set[int] = set()
        for queue in queues:
            for name in (queue + suffix for suffix in _PRIORITY_SUFFIXES):
                for raw in client.lrange(name, 0, -1):
                    job_id = _job_of(raw)
                    if job_id is not None:
                        found.add(job_id)
        return found
    except redis.RedisError as e:
        log.warning("sweep: broker %s not readable: %s", broker_url.split("@")[-1], e)
        return None
    finally:
        client.close()


def _job_of(raw: bytes) -> int | None:
    """The job id of a Celery message (protocol 2: its task and arguments in the headers), or None."""
    try:
        headers = json.loads(raw).get("headers") or {}
        if headers.get("task") not in JOB_TASKS:
            return None
        args = ast.literal_eval(headers.get("argsrepr") or "()")
        return int(args[0]) if args else None
    except (ValueError, TypeError, SyntaxError, AttributeError):
        return None
