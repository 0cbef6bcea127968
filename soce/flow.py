"""The service's vocabulary, defined once: job states, task names and the queue of each task.

Light on purpose (the standard library only): the API enqueues by these names without importing any
worker code, and the workers' state table (`workers.flow`) gives each state its step and next state.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """A job's state; a job moves queued -> scoring -> analysing -> searching -> finalizing -> done."""

    QUEUED = "queued"
    SCORING = "scoring"
    ANALYSING = "analysing"
    SEARCHING = "searching"
    FINALIZING = "finalizing"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


JOB_STATES: tuple[str, ...] = tuple(s.value for s in JobState)
FINISHED_STATES: tuple[str, ...] = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)
ACTIVE_STATES: tuple[str, ...] = tuple(s for s in JOB_STATES if s not in FINISHED_STATES)


class TaskName(StrEnum):
    """Every Celery task of the service, by the name a message carries."""

    START = "soce.job.start"
    SCORE = "soce.job.score"
    ANALYSE = "soce.job.analyse"
    SEARCH = "soce.job.search"  # names the study, asks the first trials
    TRIAL = "soce.job.trial"  # one trial; the last one moves the job to finalizing
    FINALIZE = "soce.job.finalize"
    HASH_CANDIDATE = "soce.candidates.hash"  # a registered candidate's content hash
    SCHEDULES_TICK = "soce.schedules.tick"
    SCHEDULES_NOTIFY = "soce.schedules.notify"
    JOBS_SWEEP = "soce.jobs.sweep"


GPU, CPU = "gpu", "cpu"
QUEUES: tuple[str, ...] = (GPU, CPU)

# Every task's queue: evaluations and anything holding resident models on gpu, the rest on cpu.
TASK_QUEUES: dict[str, str] = {
    TaskName.START: CPU,
    TaskName.SCORE: GPU,
    TaskName.ANALYSE: CPU,
    TaskName.SEARCH: GPU,  # builds the resident experts the first trials then find warm
    TaskName.TRIAL: GPU,
    TaskName.FINALIZE: GPU,  # baselines and the test split are evaluations of resident soups
    TaskName.HASH_CANDIDATE: CPU,  # reads a whole checkpoint: never in the API process
    TaskName.SCHEDULES_TICK: CPU,
    TaskName.SCHEDULES_NOTIFY: CPU,  # a schedule run's webhook, with its retries
    TaskName.JOBS_SWEEP: CPU,
}
