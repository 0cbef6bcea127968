"""What the dashboard's pages show, read from the job rows the workers write; charts as inline SVG.

The job page's charts and tables are report.html's own sections (`soce.report`, which imports neither
Optuna nor torch).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.trials import OptunaStudies
from soce.db.models import JOB_FINISHED_STATES, Candidate, Job, Schedule, Soup
from soce.flow import JobState
from soce.report import render_report_sections
from soce.schemas.report import Report, stored_report

STAGES = (JobState.SCORING, JobState.ANALYSING, JobState.SEARCHING, JobState.FINALIZING, JobState.DONE)


def age(when: datetime | None, now: datetime | None = None) -> str:
    """'42s', '5m', '3h', '2d' since `when`."""
    if when is None:
        return "n/a"
    seconds = max(((now or datetime.now(UTC)) - when).total_seconds(), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def progress_bars(progress: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One bar per stage in Job.progress ({stage: {done, total, unit}}), with a percentage when known."""
    bars = []
    for stage, p in (progress or {}).items():
        p = p if isinstance(p, dict) else {}
        done, total = p.get("done") or 0, p.get("total")
        percent = min(100.0, 100.0 * done / total) if total else None
        bars.append(
            {
                "stage": stage,
                "done": done,
                "total": total,
                "unit": p.get("unit") or "step",
                "percent": percent,
            }
        )
    return bars


def best_dev(job: Job, optuna: OptunaStudies) -> float | None:
    """The best dev objective so far: the search's summary, or while searching Optuna's best trial."""
    search = (job.analysis or {}).get("search") or {}
    if search.get("best_dev_objective") is not None:
        return search["best_dev_objective"]
    if job.study_name and job.state == JobState.SEARCHING:
        best = optuna.best_trial(job.study_name)
        if best and best.get("values"):
            return best["values"][0]
    return None


def job_rows(session: Session, optuna: OptunaStudies, *, limit: int = 100) -> list[dict[str, Any]]:
    """The newest jobs with what the jobs table shows."""
    jobs = session.scalars(select(Job).order_by(Job.id.desc()).limit(limit)).all()
    return [
        {
            "id": j.id,
            "name": j.name,
            "state": j.state,
            "active": j.state not in JOB_FINISHED_STATES,
            "suite": j.suite.name,
            "bars": progress_bars(j.progress),
            "best": best_dev(j, optuna),
            "age": age(j.created_at),
            "error": j.error,
        }
        for j in jobs
    ]


def timeline(job: Job) -> list[dict[str, Any]]:
    """The pipeline's stages, each 'done', 'current', 'failed' or 'pending', with its seconds if timed."""
    timings = job.timings or {}
    seconds = {
        JobState.SCORING: timings.get("score"),
        JobState.ANALYSING: timings.get("analyse"),
        JobState.SEARCHING: timings.get("search"),
        JobState.FINALIZING: timings.get("finalize"),
    }
    if job.state == JobState.DONE:
        reached = len(STAGES)
    elif job.state in STAGES:
        reached = STAGES.index(job.state)
    elif job.state == JobState.QUEUED:
        reached = -1
    else:  # failed or cancelled: stopped at the first stage without a timing
        reached = next((i for i, s in enumerate(STAGES) if seconds.get(s) is None), len(STAGES) - 1)
    out = []
    for i, stage in enumerate(STAGES):
        if i < reached or job.state == JobState.DONE:
            status = "done"
        elif i == reached:
            status = job.state if job.state in (JobState.FAILED, JobState.CANCELLED) else "current"
        else:
            status = "pending"
        out.append({"stage": stage, "status": status, "seconds": seconds.get(stage)})
    return out


def _matrix_scores(matrix: dict[str, Any] | None) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """A stored ScoreMatrix as the report's {candidate: {category: score}} and {candidate: average}."""
    if not matrix:
        return {}, {}
    cands, cats = matrix.get("candidates") or [], matrix.get("categories") or []
    values, averages = matrix.get("values") or [], matrix.get("average") or []
    scores = {c: dict(zip(cats, row, strict=False)) for c, row in zip(cands, values, strict=False)}
    return scores, dict(zip(cands, averages, strict=False))


def trial_history(job: Job, optuna: OptunaStudies) -> list[dict[str, Any]]:
    """The job's trials from Optuna's database as the report's history (number, state, objective)."""
    if not job.study_name:
        return []
    found = optuna.trials(job.study_name, limit=5000)
    if found is None:
        return []
    history, running = [], None
    for t in found.items:
        if t["user_attrs"].get("job") not in (None, job.id):
            continue  # a study shared by jobs with the same recipe: only this job's trials
        value = (t["values"] or [None])[0]
        if t["state"] == "complete" and value is not None:
            running = value if running is None else max(running, value)
        history.append(
            {"number": t["number"], "state": t["state"].upper(), "objective": value, "best_so_far": running}
        )
    return history


def job_report(job: Job, soup: Soup | None, optuna: OptunaStudies) -> Report | dict[str, Any]:
    """The job's typed Report once it is done; before that, what the rows hold so far (scores,
    correlations, experts, the search's summary) in the report's shape, for the same sections."""
    analysis = job.analysis or {}
    report = stored_report(analysis)
    if report is not None:
        return report
    scores = analysis.get("scores") or {}
    dev, dev_avg = _matrix_scores(scores.get("dev"))
    test, test_avg = _matrix_scores(scores.get("test"))
    return {
        "candidates": (scores.get("dev") or {}).get("candidates") or [],
        "categories": (scores.get("dev") or {}).get("categories") or [],
        "dev_scores": dev,
        "dev_average": dev_avg,
        "test_scores": test,
        "test_average": test_avg,
        "correlation": analysis.get("correlation") or {},
        "experts": analysis.get("experts") or [],
        "similarity": analysis.get("similarity"),
        "warnings": analysis.get("warnings") or [],
        "search": {**(analysis.get("search") or {}), "history": []},
    }


def job_sections(job: Job, soup: Soup | None, optuna: OptunaStudies) -> dict[str, str]:
    """The job page's charts and tables as HTML (escaped inline SVG): report.html's sections."""
    report = job_report(job, soup, optuna)
    if isinstance(report, dict):  # the job is not done: the live trials, as the search runs
        report["search"]["history"] = trial_history(job, optuna)
    return render_report_sections(report)


def candidate_rows(session: Session) -> tuple[list[dict[str, Any]], list[str]]:
    """Every candidate with its architecture and the dev scores per category of its latest scored job."""
    rows = session.scalars(select(Candidate).order_by(Candidate.id)).all()
    latest: dict[str, dict[str, float]] = {}
    for job in session.scalars(select(Job).where(Job.analysis.is_not(None)).order_by(Job.id)):
        dev, _ = _matrix_scores(((job.analysis or {}).get("scores") or {}).get("dev"))
        latest.update(dev)
    categories = sorted({k for s in latest.values() for k in s})
    out = []
    for c in rows:
        scores = latest.get(c.name) or latest.get(str(c.path)) or {}
        out.append(
            {
                "id": c.id,
                "name": c.name,
                "hash": c.content_hash,
                "architecture": _architecture(c),
                "scores": [scores.get(k) for k in categories],
            }
        )
    return out, categories


def _architecture(candidate: Candidate) -> str:
    """'LlamaForCausalLM (llama)' from the checkpoint's architecture summary, or 'n/a'."""
    arch = candidate.architecture or {}
    names = arch.get("architectures") or arch.get("architecture") or []
    names = names if isinstance(names, list) else [names]
    kind = arch.get("model_type")
    text = ", ".join(str(n) for n in names) + (f" ({kind})" if kind else "")
    return text.strip() or "n/a"


def schedule_rows(session: Session) -> list[dict[str, Any]]:
    """Every schedule with its champion soup."""
    return [
        {
            "id": s.id,
            "name": s.name,
            "cron": s.cron,
            "timezone": s.timezone,
            "enabled": s.enabled,
            "last_run_at": s.last_run_at,
            "next_run_at": s.next_run_at,
            "champion": None
            if s.champion is None
            else {"id": s.champion.id, "job_id": s.champion.job_id, "path": s.champion.path},
        }
        for s in session.scalars(select(Schedule).order_by(Schedule.name))
    ]
