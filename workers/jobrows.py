"""A job's row: its state (changed only by conditional updates), its JSON columns and its progress.

State changes are `UPDATE ... WHERE state = <expected>`, so a job the API cancelled, or one another
worker moved on, is never moved again by a step that finished late.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select, update

from soce.db import Job, session_scope
from soce.errors import JobCancelled, SoceError
from soce.flow import FINISHED_STATES, JobState
from workers.progress import Advance, Stages

log = logging.getLogger(__name__)


def now() -> datetime:
    return datetime.now(UTC)


def error_message(error: BaseException) -> str:
    """An error as stored on a job: our own errors by their message, others with their type."""
    text = str(error).strip()
    return text if isinstance(error, SoceError) and text else f"{type(error).__name__}: {text}"


def job_state(engine: Engine, job_id: int) -> str | None:
    with session_scope(engine) as session:
        return session.scalar(select(Job.state).where(Job.id == job_id))


def move_job(engine: Engine, job_id: int, *, from_state: str, to_state: str, **values: Any) -> bool:
    """Set the state (and other columns) only if the job is still in `from_state`; whether it was."""
    with session_scope(engine) as session:
        result = session.execute(
            update(Job).where(Job.id == job_id, Job.state == from_state).values(state=to_state, **values)
        )
        return result.rowcount == 1


def fail_job(engine: Engine, job_id: int, message: str) -> bool:
    """Mark a job failed with `message`, unless it already finished (done, failed or cancelled)."""
    with session_scope(engine) as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state.not_in(FINISHED_STATES))
            .values(state=JobState.FAILED, error=message, finished_at=now())
        )
        return result.rowcount == 1


def merge_json(engine: Engine, job_id: int, column: str, values: dict[str, Any]) -> None:
    """Set top-level keys of a JSON column (read, merge, write: only this job's chain writes them).

    Only that column is read and written, not the whole row (whose analysis holds score matrices).
    """
    attribute = getattr(Job, column)
    with session_scope(engine) as session:
        found = session.execute(select(attribute).where(Job.id == job_id)).first()
        if found is not None:
            merged = {**(found[0] or {}), **values}
            session.execute(update(Job).where(Job.id == job_id).values({attribute: merged}))


def stored_json(engine: Engine, job_id: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The job's analysis and timings as stored now."""
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise JobCancelled(f"job {job_id} no longer exists")
        return dict(job.analysis or {}), dict(job.timings or {})


class JobProgress(Stages):
    """Progress per stage in Job.progress ({stage: {done, total, unit}}); stops a cancelled job.

    `display` also shows each stage (a local run's progress bars and notes).
    """

    def __init__(self, engine: Engine, job_id: int, *, every: float = 0.5, display: Stages | None = None):
        super().__init__(quiet=True)
        self.engine, self.job_id, self.every = engine, job_id, every
        self.display = display or Stages(quiet=True)

    def cancelled(self) -> bool:
        return job_state(self.engine, self.job_id) == JobState.CANCELLED

    def check(self) -> None:
        if self.cancelled():
            raise JobCancelled(f"job {self.job_id} was cancelled")

    @staticmethod
    def key(desc: str) -> str:
        return desc if desc.startswith("score") else desc.split()[0]  # "search tpe" -> "search"

    def write(self, key: str, done: int, total: int | None, unit: str, **extra: Any) -> None:
        merge_json(
            self.engine,
            self.job_id,
            "progress",
            {key: {"done": done, "total": total, "unit": unit, **extra}},
        )

    @contextmanager
    def stage(self, desc: str, total: int | None, unit: str = "step") -> Iterator[Advance]:
        self.check()
        key, done, last = self.key(desc), 0, 0.0
        with self.display.stage(desc, total, unit) as shown:

            def advance(n: int = 1) -> None:
                nonlocal done, last
                done += n
                shown(n)
                if time.monotonic() - last >= self.every or (total is not None and done >= total):
                    last = time.monotonic()
                    self.write(key, done, total, unit)
                    self.check()  # between tasks or trials, never inside an evaluation

            self.write(key, done, total, unit)
            yield advance
            self.write(key, done, total, unit)

    def note(self, message: str) -> None:
        log.info("job %d: %s", self.job_id, message)
        self.display.note(message)


@contextmanager
def heartbeat(engine: Engine, job_id: int, every: float) -> Iterator[None]:
    """While the block runs, set the job's `heartbeat_at` now and every `every` seconds (a thread).

    The row's `updated_at` is left as it is: it says when the job last made progress, the heartbeat
    that a worker is on it. A failed beat (the database restarting) is logged and tried at the next.
    """
    stop = threading.Event()

    def beat() -> None:
        try:
            with session_scope(engine) as session:
                session.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state.not_in(FINISHED_STATES))
                    .values(heartbeat_at=now(), updated_at=Job.updated_at)
                )
        except Exception as e:  # the task itself meets the same fault and retries
            log.warning("job %d: heartbeat not written: %s", job_id, error_message(e))

    def loop() -> None:
        while not stop.wait(every):
            beat()

    beat()
    thread = threading.Thread(target=loop, name=f"soce-heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every + 5)
