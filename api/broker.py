"""The broker seen from the API: enqueue by task name, ping Redis and workers, count queued messages.

The API registers no tasks and imports no worker code: Celery sends a message named, say,
`soce.job.start` to that task's queue (soce.flow), and whichever worker knows that name runs it.
"""

from __future__ import annotations

import logging
from typing import Any

from soce.flow import QUEUES, TASK_QUEUES, TaskName

# Score cache counters the workers INCR in Redis (hits and misses); /metrics reports them.
SCORE_CACHE_HITS_KEY = "soce:metrics:score_cache_hits"
SCORE_CACHE_MISSES_KEY = "soce:metrics:score_cache_misses"

log = logging.getLogger(__name__)


class JobQueue:
    """Celery (to send) and redis-py (to ping and count) on one broker URL; nothing connects until used."""

    def __init__(self, broker_url: str, *, visibility_timeout: int = 6 * 3600, timeout: float = 2.0) -> None:
        self.broker_url = broker_url
        self.visibility_timeout = visibility_timeout
        self.timeout = timeout
        self._celery: Any = None
        self._redis: Any = None

    @property
    def celery(self) -> Any:
        if self._celery is None:
            from celery import Celery

            app = Celery("soce-api", broker=self.broker_url, set_as_current=False)
            app.conf.update(
                broker_connection_retry_on_startup=False,
                broker_connection_timeout=self.timeout,
                broker_transport_options={
                    "visibility_timeout": self.visibility_timeout,
                    "socket_connect_timeout": self.timeout,
                    "socket_timeout": self.timeout,
                },
                task_serializer="json",
            )
            self._celery = app
        return self._celery

    @property
    def redis(self) -> Any:
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(
                self.broker_url, socket_connect_timeout=self.timeout, socket_timeout=self.timeout
            )
        return self._redis

    def _send(self, task: TaskName, row_id: int) -> str:
        """Send `task(row_id)` to the task's queue without retrying; returns the task id."""
        result = self.celery.send_task(str(task), args=[row_id], queue=TASK_QUEUES[task], retry=False)
        log.info("enqueued %s(%d) as %s", task, row_id, result.id)
        return str(result.id)

    def start_job(self, job_id: int) -> str:
        """Send `soce.job.start(job_id)` to the cpu queue; returns the task id. Call after the commit."""
        return self._send(TaskName.START, job_id)

    def hash_candidate(self, candidate_id: int) -> str:
        """Send `soce.candidates.hash(candidate_id)` to the cpu queue; returns the task id. Call after
        the commit."""
        return self._send(TaskName.HASH_CANDIDATE, candidate_id)

    def ping(self) -> None:
        """Raise if Redis cannot be reached."""
        self.redis.ping()

    def depths(self) -> dict[str, int]:
        """Messages waiting in each queue (Redis keeps a queue as a list named after it)."""
        return {q: int(self.redis.llen(q)) for q in QUEUES}

    def score_cache_counts(self) -> tuple[int, int]:
        """(hits, misses) counted by the workers; (0, 0) before any scoring."""
        hits, misses = self.redis.mget([SCORE_CACHE_HITS_KEY, SCORE_CACHE_MISSES_KEY])
        return int(hits or 0), int(misses or 0)

    def workers(self, timeout: float = 0.5) -> list[str]:
        """Names of the workers that answer a control ping within `timeout` seconds."""
        replies = self.celery.control.ping(timeout=timeout) or []
        return sorted(name for reply in replies for name in reply)

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None
        if self._celery is not None:
            self._celery.close()
            self._celery = None
