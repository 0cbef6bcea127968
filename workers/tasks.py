"""Thin Celery tasks: each runs one job step (workers.jobs) and enqueues the next one after its commit.

Queues (workers.celery_app.TASK_QUEUES): start and analyse on `cpu`; score, search and finalize on
`gpu`, where the job's candidates stay resident between tasks (workers.jobs.resident_cache).

The search task runs the whole Optuna ask/tell loop of a job on one gpu worker, with up to
`parallel_trials` trials in flight on its resident model; trials are not yet spread over several
workers as separate tasks. A worker killed mid-search has the task delivered again, and the study
continues: the trial it left running is asked again, finished trials are not run again.
"""

from __future__ import annotations

import logging

from celery import Task
from celery.signals import worker_process_init

from workers.celery_app import app
from workers.jobs import run_step

log = logging.getLogger(__name__)


@worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    """A forked pool process must not share the parent's database connections."""
    from soce.db import dispose_engines

    dispose_engines()


def _step(task: Task, job_id: int) -> str | None:
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    following = run_step(task.name, int(job_id), redelivered=redelivered)
    if following is not None:
        app.send_task(following, args=[int(job_id)])
    return following


@app.task(name="soce.job.start", bind=True)
def start_job(self: Task, job_id: int) -> str | None:
    """Validate the job's candidates, suite and recipe; queued -> scoring."""
    return _step(self, job_id)


@app.task(name="soce.job.score", bind=True)
def score_job(self: Task, job_id: int) -> str | None:
    """Score every candidate on dev and test through the score cache; scoring -> analysing."""
    return _step(self, job_id)


@app.task(name="soce.job.analyse", bind=True)
def analyse_job(self: Task, job_id: int) -> str | None:
    """Correlations and category experts from the dev matrix; analysing -> searching."""
    return _step(self, job_id)


@app.task(name="soce.job.search", bind=True)
def search_job(self: Task, job_id: int) -> str | None:
    """Optuna weight search on the resident experts; searching -> finalizing."""
    return _step(self, job_id)


@app.task(name="soce.job.finalize", bind=True)
def finalize_job(self: Task, job_id: int) -> str | None:
    """Baselines, soup folder, test scores, report and the Soup row; finalizing -> done."""
    return _step(self, job_id)
