"""`soce run` and `soce demo`: the service's job, run in this process on the embedded databases.

The recipe's candidates and suite are registered as rows (reused when already there), a job is
created with the recipe's search settings and output folder, and `workers.flow.run_job` runs the same
states, steps and trial tasks a Celery worker would, one message at a time. So a feature of the
pipeline is written once, and a study continued by `soce run` or by the service asks the same trials.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from sqlalchemy import Engine, select

from soce.config import Settings, get_settings
from soce.db import Candidate, Job, Suite, crud, get_engine, session_scope
from soce.errors import JobError
from soce.flow import ACTIVE_STATES, JobState
from soce.schemas.report import Report
from soce.schemas.run import RunRecipe
from soce.schemas.suite import SuiteSpec, canonical_hash
from workers.finalize import RunResult
from workers.flow import run_job
from workers.jobrows import fail_job
from workers.pipeline import candidate_labels, ensure_soupable
from workers.progress import Stages

log = logging.getLogger(__name__)

DRIVER = "driver"  # Job.analysis key: the process running a local job, {host, pid}


def run_local(
    recipe: RunRecipe,
    *,
    stages: Stages | None = None,
    engine: Engine | None = None,
    settings: Settings | None = None,
) -> RunResult:
    """The whole pipeline in this process: rows in the app database, the study in Optuna's."""
    settings = settings or get_settings()
    engine = engine or get_engine(settings.app_database_url())
    stages = stages or Stages(quiet=True)
    fail_orphans(engine)
    job_id = create_local_job(engine, recipe)
    try:
        state = run_job(job_id, settings=settings, engine=engine, display=stages)
    except BaseException as e:  # Ctrl-C, or an error outside any step: the job must not stay active
        fail_job(engine, job_id, f"interrupted: {type(e).__name__}: {e}".rstrip(": "))
        raise
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        error, analysis, timings = job.error, dict(job.analysis or {}), dict(job.timings or {})
    if state != JobState.DONE:
        raise JobError(f"job {job_id} {state}: {error or 'no reason recorded'}")
    report = Report.model_validate(analysis["report"])
    files = analysis["files"]
    out = Path(recipe.output).expanduser().resolve()
    return RunResult(out, Path(report.soup.path), Path(files["json"]), Path(files["html"]), report, timings)


def create_local_job(engine: Engine, recipe: RunRecipe) -> int:
    """Register the recipe's candidates and suite (reusing rows already there) and queue a job; its id.

    Candidates that cannot be souped together, or a suite that cannot be read, are refused before
    anything is written.
    """
    paths = candidate_labels(recipe.candidate_paths())
    ensure_soupable(paths.values())
    spec = SuiteSpec.from_file(recipe.suite)
    data = spec.model_dump(mode="json")
    digest = canonical_hash(data)
    settings_only = recipe.model_dump(mode="json", exclude={"candidates", "suite"})
    settings_only["output"] = str(Path(recipe.output).expanduser().resolve())
    with session_scope(engine) as session:
        suite = crud.get_suite_by_hash(session=session, content_hash=digest)
        if suite is None:
            suite = Suite(name=spec.name, spec=data, content_hash=digest)
            session.add(suite)
        candidates = []
        for label, path in paths.items():
            where = (Candidate.path == str(path), Candidate.name == label)
            row = session.scalar(select(Candidate).where(*where).order_by(Candidate.id).limit(1))
            if row is None:
                row = Candidate(name=label, path=str(path))
                session.add(row)
            candidates.append(row)
        job = crud.create_job(
            session=session, name=recipe.name, suite=suite, candidates=candidates, recipe=settings_only
        )
        job.analysis = {DRIVER: {"host": socket.gethostname(), "pid": os.getpid()}}
        return job.id


def fail_orphans(engine: Engine) -> int:
    """Fail the local jobs left active by a process of this machine that no longer runs; how many.

    Their running trials are then stale: the next search on their study fails them and asks their
    points again.
    """
    host = socket.gethostname()
    with session_scope(engine) as session:
        rows = session.execute(select(Job.id, Job.analysis).where(Job.state.in_(ACTIVE_STATES))).all()
    failed = 0
    for job_id, analysis in rows:
        driver = (analysis or {}).get(DRIVER) or {}
        if driver.get("host") == host and not _alive(int(driver.get("pid") or 0)):
            failed += fail_job(engine, job_id, "interrupted: the process running it stopped")
    return failed


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
