"""The Celery app `soce`: Redis broker, a `gpu` and a `cpu` queue, every task routed by name.

Tasks are idempotent and acknowledged late, so a worker that dies mid-task has its task delivered
again (at once when only the pool child dies; after the Redis `visibility_timeout` when the whole
worker does). One task at a time per worker process: evaluations are long and hold a GPU.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from soce.config import Settings, get_settings
from soce.flow import CPU, GPU, TASK_QUEUES, TaskName

TICK_SECONDS = 60.0  # how often beat sends the schedules' tick (workers.schedules)
SWEEP_SECONDS = 30.0  # how often beat sends the sweep of stalled jobs (workers.sweep)


def make_app(settings: Settings | None = None) -> Celery:
    """A Celery app configured from `settings`; tasks are registered by `workers.tasks`."""
    settings = settings or get_settings()
    app = Celery("soce", broker=settings.broker_url, include=["workers.tasks"])
    app.conf.update(
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # state lives in the app database, not in a result backend
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(GPU), Queue(CPU)],
        task_default_queue=CPU,
        task_routes={str(name): {"queue": queue} for name, queue in TASK_QUEUES.items()},
        task_track_started=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,  # lets the API and flower see which workers are alive
        task_send_sent_event=True,
        # beat's periodic tasks: start due schedules and judge finished runs; send again the tasks of
        # jobs whose messages were lost. Both expire, so a backlog of them (no cpu worker for a while)
        # collapses instead of running one after another
        beat_schedule={
            "schedules-tick": {
                "task": TaskName.SCHEDULES_TICK,
                "schedule": TICK_SECONDS,
                "options": {"queue": CPU, "expires": TICK_SECONDS},
            },
            "jobs-sweep": {
                "task": TaskName.JOBS_SWEEP,
                "schedule": SWEEP_SECONDS,
                "options": {"queue": CPU, "expires": SWEEP_SECONDS},
            },
        },
    )
    return app


app = make_app()
