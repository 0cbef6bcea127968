"""Thin Celery tasks: each runs one task of a job (workers.flow) and sends what comes next after its commit.

Queues (soce.flow.TASK_QUEUES): start and analyse on `cpu`; score, search, trial and
finalize on `gpu`, where the job's candidates stay resident between tasks (workers.context.resident_cache).

The search task asks the job's first `parallel_trials` trials and sends one trial task each; every
trial task evaluates its trial, tells the study and sends the next trials, so up to `parallel_trials`
trials of a job run at once, on as many gpu workers as there are (workers.trials). A worker killed
mid-trial has the task delivered again, and the same trial is evaluated again; finished trials are
never run again.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.signals import worker_process_init

from soce.flow import TaskName
from workers.celery_app import app
from workers.flow import run_task

log = logging.getLogger(__name__)


@worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    """A forked pool process must not share the parent's database connections."""
    from soce.db import dispose_engines

    dispose_engines()


def _run(task: Task, *args: int) -> list[str]:
    """Run the job task and send its next messages; an error a retry can cure, still there after the
    in-task retries, has Celery retry the task later (as a redelivery), a bounded number of times."""
    from soce.config import get_settings
    from soce.errors import is_transient

    redelivered = bool((task.request.delivery_info or {}).get("redelivered")) or task.request.retries > 0
    try:
        messages = run_task(task.name, [int(a) for a in args], redelivered=redelivered)
        for m in messages:
            app.send_task(m.task, args=list(m.args))
    except Exception as e:
        if not is_transient(e):
            raise
        settings = get_settings()
        log.warning("%s%s: %s; retried in %.0f s", task.name, args, e, settings.transient_requeue_seconds)
        raise task.retry(
            exc=e, countdown=settings.transient_requeue_seconds, max_retries=settings.transient_requeues
        ) from e
    return [m.task for m in messages]


@app.task(name=TaskName.START, bind=True)
def start_job(self: Task, job_id: int) -> list[str]:
    """Validate the job's candidates, suite and recipe; queued -> scoring."""
    return _run(self, job_id)


@app.task(name=TaskName.SCORE, bind=True)
def score_job(self: Task, job_id: int) -> list[str]:
    """Score every candidate on dev and test through the score cache; scoring -> analysing."""
    return _run(self, job_id)


@app.task(name=TaskName.ANALYSE, bind=True)
def analyse_job(self: Task, job_id: int) -> list[str]:
    """Correlations and category experts from the dev matrix; analysing -> searching."""
    return _run(self, job_id)


@app.task(name=TaskName.SEARCH, bind=True)
def search_job(self: Task, job_id: int) -> list[str]:
    """Ready the job's Optuna study and send its first trials (searching)."""
    return _run(self, job_id)


@app.task(name=TaskName.TRIAL, bind=True)
def trial_job(self: Task, job_id: int, number: int) -> list[str]:
    """Evaluate one trial on the resident experts, tell the study, send the next; the last -> finalizing."""
    return _run(self, job_id, number)


@app.task(name=TaskName.FINALIZE, bind=True)
def finalize_job(self: Task, job_id: int) -> list[str]:
    """Baselines, soup folder, test scores, report and the Soup row; finalizing -> done."""
    return _run(self, job_id)


@app.task(name=TaskName.SCHEDULES_TICK)
def schedules_tick() -> list[int]:
    """Start the due schedules' runs and judge the runs whose job ended (sent by beat every minute)."""
    from datetime import UTC, datetime

    from soce.config import get_settings
    from soce.db import get_engine
    from workers.schedules import tick

    settings = get_settings()
    engine = get_engine(settings.app_database_url())
    delays = tuple(settings.webhook_retry_seconds)
    return tick(
        engine,
        datetime.now(UTC),
        data_dir=settings.data_dir,
        send=_send,
        webhook_delays=delays,
        notify_later=lambda run_id: _send(TaskName.SCHEDULES_NOTIFY, [run_id]),
    )


@app.task(name=TaskName.SCHEDULES_NOTIFY, bind=True)
def schedules_notify(self: Task, run_id: int) -> bool:
    """POST a finished schedule run's summary to its webhook once; delivered?

    A 5xx answer, a timeout or a connection error is tried again by Celery after the next of
    `webhook_retry_seconds`; any other failure (a 4xx answer, say) is final. Each try is recorded on
    the run (workers.schedules.notify); the task itself never fails.
    """
    from soce.config import get_settings
    from soce.db import get_engine
    from workers.schedules import notify

    settings = get_settings()
    delays = settings.webhook_retry_seconds
    tries = self.request.retries  # the tries before this one
    engine = get_engine(settings.app_database_url())
    attempt = notify(engine, int(run_id), retries_left=tries < len(delays))
    if attempt is not None and attempt.transient and tries < len(delays):
        raise self.retry(countdown=delays[tries], max_retries=len(delays))
    return attempt is not None and attempt.delivered


@app.task(name=TaskName.JOBS_SWEEP)
def jobs_sweep() -> list[list[Any]]:
    """Send again the task of every job whose task was lost (no progress, no heartbeat, no message
    waiting); beat sends this every 30 s."""
    from datetime import UTC, datetime

    from soce.config import get_settings
    from soce.db import get_engine
    from workers.sweep import queued_jobs, sweep

    settings = get_settings()
    engine = get_engine(settings.app_database_url())
    sent = sweep(
        engine,
        datetime.now(UTC),
        settings=settings,
        send=_send,
        queued=lambda: queued_jobs(settings.broker_url),
    )
    return [list(x) for x in sent]


def _send(task: str, args: list[int]) -> None:
    app.send_task(task, args=args)


@app.task(name=TaskName.HASH_CANDIDATE)
def hash_candidate(candidate_id: int) -> str | None:
    """Store a registered candidate's content hash, or why its folder cannot be read (sent by the API)."""
    from soce.config import get_settings
    from soce.db import get_engine
    from workers.candidates import hash_candidate as hash_and_store

    engine = get_engine(get_settings().app_database_url())
    return hash_and_store(engine, int(candidate_id))
