"""Scheduled runs: `tick` starts the due ones and judges the finished ones against the champion.

Celery beat sends `soce.schedules.tick` every minute (workers.celery_app). The tick holds a PostgreSQL
advisory lock for its transaction, so two beats (or a beat and a manual tick) never start one due time
twice; the (schedule, due_at) unique key is the second guard. Jobs are enqueued after the commit.

A run that ended is POSTed to its schedule's webhook, one try at a time (`notify`); the service tries
again in Celery's own retries (workers.tasks.schedules_notify). Each try is recorded in the run's
`details["webhook"]`.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from soce.db import crud
from soce.db.engine import session_scope
from soce.db.models import Candidate, Job, Schedule, ScheduleRun, Soup, Suite
from soce.flow import JobState, TaskName
from soce.schedules import ScheduleError, next_fire

log = logging.getLogger(__name__)

TICK_LOCK = 0x50CE_5C4E  # the advisory lock key of the tick
Send = Callable[[str, list[int]], None]


def _lock(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": TICK_LOCK})


def _register_glob(session: Session, pattern: str) -> list[Candidate]:
    """Folders matching `pattern`, registered when new (the API's checks and summary); broken ones skipped."""
    from soce.checkpoints import Checkpoint, architecture_summary
    from soce.errors import SoceError

    rows = []
    for raw in sorted(glob.glob(pattern)):
        path = Path(raw).resolve()
        if not path.is_dir():
            continue
        row = crud.get_candidate_by_path(session=session, path=str(path))
        if row is None:
            try:
                with Checkpoint.open(path) as ckpt:
                    row = Candidate(
                        name=path.name,
                        path=str(path),
                        architecture=architecture_summary(ckpt),
                        size_bytes=ckpt.nbytes,
                    )
            except SoceError as e:
                log.warning("schedule glob %s: %s is not a usable checkpoint: %s", pattern, path, e)
                continue
            session.add(row)
            session.flush()
        rows.append(row)
    return rows


def _incompatibility(candidates: list[Candidate]) -> str | None:
    """Why these checkpoints cannot be merged (the API's check on registration), or None."""
    from contextlib import ExitStack

    from soce.checkpoints import Checkpoint, check_compatibility
    from soce.errors import SoceError

    try:
        with ExitStack() as stack:
            opened = [stack.enter_context(Checkpoint.open(c.path)) for c in candidates]
            report = check_compatibility(opened, same_dtype=False)
    except SoceError as e:
        return str(e)
    if report.ok:
        return None
    return "incompatible candidates: " + "; ".join(p.message for p in report.problems[:3])


def _candidates(session: Session, schedule: Schedule) -> list[Candidate]:
    source = schedule.candidate_source
    if source.get("glob"):
        found = _register_glob(session, source["glob"])
    else:
        found = crud.list_candidates(session=session, tag=source.get("tag"))
    return [c for c in found if c.error is None]


def _previous_candidate_ids(session: Session, schedule: Schedule) -> set[int] | None:
    """Candidates of the schedule's last run that had a job; None when no run had one."""
    job = session.scalar(
        select(Job)
        .join(ScheduleRun, ScheduleRun.job_id == Job.id)
        .where(ScheduleRun.schedule_id == schedule.id)
        .order_by(ScheduleRun.due_at.desc())
        .limit(1)
    )
    return None if job is None else {c.id for c in job.candidates}


def _start_run(session: Session, schedule: Schedule, due_at: datetime, now: datetime) -> int | None:
    """One run for `due_at`: a job over the candidates, or a skipped run; the job's id to enqueue."""
    run = ScheduleRun(schedule_id=schedule.id, due_at=due_at, outcome="running", details={})
    session.add(run)
    candidates = _candidates(session, schedule)
    ids = [c.id for c in candidates]
    previous = _previous_candidate_ids(session, schedule)
    new = sorted(set(ids) - (previous or set())) if previous is not None else ids
    run.details = {"candidates": ids, "new_candidates": new}
    if not new or len(candidates) < 2:
        run.outcome, run.finished_at = "skipped", now
        run.details["reason"] = "no new candidates" if not new else "fewer than 2 candidates"
        return None
    recipe = dict(schedule.recipe_template)
    suite = session.get(Suite, recipe.pop("suite_id", None))
    problem = "the recipe's suite does not exist" if suite is None else None
    champion = schedule.champion
    if champion is not None:  # scored on test by the job, for a paired interval of soup minus champion
        extra = recipe.get("extra_baselines") or {}
        if not isinstance(extra, dict):
            problem = problem or "the recipe's extra_baselines is not a mapping of name to folder"
        else:
            recipe["extra_baselines"] = {**extra, "champion": champion.path}
            run.details["champion_soup_id"] = champion.id
    if problem is None and schedule.candidate_source.get("glob"):  # folders nobody checked yet
        problem = _incompatibility(candidates)
    if suite is None or problem is not None:
        run.outcome, run.finished_at, run.error = "failed", now, problem
        return None
    job = crud.create_job(
        session=session,
        name=f"{schedule.name} {due_at:%Y-%m-%d %H:%M}",
        suite=suite,
        candidates=candidates,
        recipe=recipe,
        idempotency_key=f"schedule-{schedule.id}-{due_at.isoformat()}",
    )
    run.job_id = job.id
    return job.id


def _next(schedule: Schedule, after: datetime) -> datetime | None:
    """The schedule's next fire time; None (never fires) when its stored cron or time zone is broken."""
    try:
        return next_fire(schedule.cron, schedule.timezone, after)
    except ScheduleError as e:
        log.error("schedule %s will not run: %s", schedule.name, e)
        return None


def _celery_send(task: str, args: list[int]) -> None:
    from workers.celery_app import app

    app.send_task(task, args=args)


def tick(
    engine: Engine,
    now: datetime,
    *,
    data_dir: Path | None = None,
    send: Send | None = None,
    webhook_delays: tuple[float, ...] = (1.0, 2.0, 4.0),
    notify_later: Callable[[int], None] | None = None,
) -> list[int]:
    """Start every due enabled schedule (one run each) and judge runs whose job ended; the jobs started.

    The webhooks of the runs that ended are handed to `notify_later` (the service sends them as their
    own task, so a slow or dead webhook never holds the tick), or called here, tried again after each of
    `webhook_delays`, when there is no `notify_later` or it fails.
    """
    started: list[int] = []
    ended: list[int] = []
    with session_scope(engine) as session:
        _lock(session)
        unplanned = session.scalars(
            select(Schedule).where(Schedule.enabled.is_(True), Schedule.next_run_at.is_(None))
        ).all()
        for schedule in unplanned:  # stored without a next time (by SQL, say): the first after its last
            schedule.next_run_at = _next(schedule, schedule.last_run_at or schedule.created_at or now)
        session.flush()
        due = session.scalars(
            select(Schedule)
            .where(Schedule.enabled.is_(True), Schedule.next_run_at.is_not(None), Schedule.next_run_at <= now)
            .order_by(Schedule.id)
        ).all()
        for schedule in due:
            due_at = schedule.next_run_at
            assert due_at is not None
            exists = session.scalar(
                select(ScheduleRun.id).where(
                    ScheduleRun.schedule_id == schedule.id, ScheduleRun.due_at == due_at
                )
            )
            if exists is None:
                job_id = _start_run(session, schedule, due_at, now)
                if job_id is not None:
                    started.append(job_id)
            schedule.last_run_at = due_at
            schedule.next_run_at = _next(schedule, max(now, due_at))
        if data_dir is not None:
            ended = judge_finished(session, data_dir=data_dir, now=now)
    for job_id in started:  # after the commit
        try:
            (send or _celery_send)(TaskName.START, [job_id])
        except Exception as e:
            log.error("scheduled job %d could not be enqueued: %s", job_id, e)
            with session_scope(engine) as session:
                job = session.get(Job, job_id)
                if job is not None:
                    job.state, job.error = JobState.FAILED, f"could not be enqueued ({type(e).__name__}: {e})"
    for run_id in ended:
        if notify_later is not None:
            try:
                notify_later(run_id)
                continue
            except Exception as e:
                log.error("webhook of schedule run %d could not be enqueued (%s); calling it now", run_id, e)
        notify_with_retries(engine, run_id, delays=webhook_delays)
    return started


# --- the promotion gate ------------------------------------------------------------------------
def _metric(soup: Soup, metric: str) -> tuple[float, float]:
    """The soup's value of `metric` and the half-width of its confidence interval (0 when unknown)."""
    scores = soup.scores or {}
    if metric not in scores:
        raise LookupError(f"soup {soup.id} has no score {metric!r}")
    value = float(scores[metric])
    interval = scores.get(f"{metric}_interval")
    half = (float(interval[1]) - float(interval[0])) / 2 if interval else 0.0
    return value, half


PAIRED_METRIC = "test_average"  # the metric the job's paired soup-minus-champion interval is on


def _paired(soup: Soup, champion: Soup, metric: str) -> tuple[dict[str, Any] | None, str | None]:
    """The job's paired interval of soup minus `champion` (scores["vs_champion"]), or why it is unusable."""
    found = (soup.scores or {}).get("vs_champion")
    if metric != PAIRED_METRIC:
        return None, f"the paired interval is on {PAIRED_METRIC}, the policy's metric is {metric}"
    if not found:
        return None, "the job did not score the champion"
    if found.get("error"):
        return None, f"the job could not score the champion: {found['error']}"
    if found.get("soup_id") != champion.id:
        scored = f"soup {found.get('soup_id')} ({found.get('path')})"
        return None, f"the job scored {scored}, not the champion, soup {champion.id}"
    return found, None


def gate(soup: Soup, champion: Soup | None, policy: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Promote `soup` over `champion`? Promote when the lower bound of (soup - champion) > min_improvement.

    The interval is the job's paired bootstrap one (both soups scored on the same test examples) when
    the job scored the champion; otherwise both soups' own intervals combined as independent (half-widths
    in quadrature), and the details say why. The first run of a schedule has no champion and is promoted.
    A soup is never promoted unless its job decided to use it (`decision.kind` is `soup`): when the
    job kept a single candidate, the soup was written for inspection only.
    """
    metric = policy.get("metric", "test_average")
    value, half = _metric(soup, metric)
    decision = (soup.scores or {}).get("decision") or {}
    if decision.get("kind") != "soup":
        why = (
            f"the job kept the single candidate {decision.get('name')}: {decision.get('reason')}"
            if decision.get("kind") == "single"
            else "the job recorded no decision to use the soup"
        )
        return False, {"metric": metric, "soup": value, "decision": decision.get("kind"), "refused": why}
    if champion is None:
        return True, {"metric": metric, "soup": value, "champion": None}
    minimum = float(policy.get("min_improvement", 0.0))
    paired, why = _paired(soup, champion, metric)
    if paired is not None:
        diff, (low, high) = float(paired["difference"]), (float(x) for x in paired["interval"])
        details = {
            "metric": metric,
            "method": "paired",
            "soup": value,
            "champion": float(paired.get("test_average", value - diff)),  # as scored by this job
            "champion_recorded": _metric(champion, metric)[0],
            "difference": diff,
            "interval": [low, high],
            "level": paired.get("level"),
            "min_improvement": minimum,
        }
        return low > minimum, details
    best, best_half = _metric(champion, metric)
    diff, margin = value - best, math.hypot(half, best_half)
    low = diff - margin
    details = {
        "metric": metric,
        "method": "independent",
        "fallback_reason": why,
        "soup": value,
        "champion": best,
        "difference": diff,
        "interval": [low, diff + margin],
        "min_improvement": minimum,
    }
    return low > minimum, details


def write_champion(data_dir: Path, schedule: Schedule, soup: Soup) -> Path:
    """`<data_dir>/champions/<name>.json` -> the soup folder, replaced atomically."""
    folder = data_dir / "champions"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{schedule.name}.json"
    tmp = folder / f".{schedule.name}.json.tmp"
    tmp.write_text(json.dumps({"soup_id": soup.id, "path": soup.path, "job_id": soup.job_id}, indent=2))
    os.replace(tmp, target)
    return target


def judge(session: Session, run: ScheduleRun, *, data_dir: Path, now: datetime) -> bool:
    """Decide a run whose job ended: promoted, not_better or failed; True when the run ended now."""
    job = run.job
    if job is None:
        run.outcome, run.error, run.finished_at = "failed", "the run's job was deleted", now
        return True
    if job.state in (JobState.FAILED, JobState.CANCELLED):
        run.outcome, run.error, run.finished_at = "failed", job.error or f"job {job.state}", now
        return True
    if job.state != JobState.DONE:
        return False
    try:
        soup = session.scalar(select(Soup).where(Soup.job_id == job.id).order_by(Soup.id.desc()).limit(1))
        if soup is None:
            raise LookupError(f"job {job.id} is done but stored no soup")
        schedule = run.schedule
        promote, details = gate(soup, schedule.champion, schedule.promotion_policy)
        run.details = {**run.details, "gate": details, "soup_id": soup.id}
        if promote:
            schedule.champion_soup_id = soup.id
            session.flush()
            write_champion(data_dir, schedule, soup)
        run.outcome = "promoted" if promote else "not_better"
    except Exception as e:  # a broken gate ends the run, never the tick
        log.exception("promotion gate of schedule run %d failed", run.id)
        run.outcome, run.error = "failed", f"promotion gate failed: {type(e).__name__}: {e}"
    run.finished_at = now
    return True


def judge_finished(session: Session, *, data_dir: Path, now: datetime) -> list[int]:
    """Judge every open run whose job ended; the ids of the runs that ended."""
    runs = session.scalars(
        select(ScheduleRun)
        .where(ScheduleRun.outcome == "running")
        .order_by(ScheduleRun.id)
        .with_for_update(skip_locked=True)
        if session.get_bind().dialect.name == "postgresql"
        else select(ScheduleRun).where(ScheduleRun.outcome == "running").order_by(ScheduleRun.id)
    ).all()
    return [run.id for run in runs if judge(session, run, data_dir=data_dir, now=now)]


# --- webhooks ------------------------------------------------------------------------------------
WEBHOOK_TIMEOUT_SECONDS = 5.0
# no answer, or an answer cut short: the webhook may be up again on a later try
_TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


@dataclass(frozen=True)
class WebhookAttempt:
    """One POST of a run's summary: the answer's status (None without one) and why it failed, if it did."""

    status: int | None
    error: str | None
    transient: bool  # a 5xx answer, a timeout or a connection error: a later try may succeed

    @property
    def delivered(self) -> bool:
        return self.error is None


def post_summary(
    url: str, summary: dict[str, Any], *, timeout: float = WEBHOOK_TIMEOUT_SECONDS
) -> WebhookAttempt:
    """POST `summary` as JSON to `url` once; a 2xx answer delivers it, redirects are not followed."""
    try:
        response = httpx.post(url, json=summary, timeout=timeout, follow_redirects=False)
    except _TRANSIENT as e:
        return WebhookAttempt(None, f"{type(e).__name__}: {str(e) or 'no answer'}", transient=True)
    except (httpx.HTTPError, httpx.InvalidURL) as e:  # a URL no try can reach (unknown scheme, say)
        return WebhookAttempt(None, f"{type(e).__name__}: {e}", transient=False)
    status = response.status_code
    if response.is_success:
        return WebhookAttempt(status, None, transient=False)
    error = f"HTTP {status} {response.reason_phrase}".strip()
    if response.is_redirect:
        error += f" (redirects to {response.headers.get('location')!r}: give the final URL)"
    return WebhookAttempt(status, error, transient=status >= 500)


def _summary(run: ScheduleRun) -> dict[str, Any]:
    """What a run's webhook receives; the same on every try."""
    return {
        # the job's verdict first: use its soup, or keep the named candidate (none if it failed)
        "verdict": (((run.job.analysis or {}).get("report") or {}).get("verdict") if run.job else None),
        "schedule": run.schedule.name,
        "run_id": run.id,
        "due_at": run.due_at.isoformat(),
        "outcome": run.outcome,
        "job_id": run.job_id,
        "details": {k: v for k, v in (run.details or {}).items() if k != "webhook"},
        "error": run.error,
    }


def notify(
    engine: Engine, run_id: int, *, retries_left: bool = False, timeout: float = WEBHOOK_TIMEOUT_SECONDS
) -> WebhookAttempt | None:
    """POST the run's summary to its schedule's webhook once and record the try; None without a webhook.

    The run's `details["webhook"]` gets the number of tries, the last answer's status and error, and
    the outcome: `delivered`, `retrying` (a transient failure with `retries_left`) or `failed` (a 4xx
    answer, a URL that cannot work, or a transient failure on the last try). Never fails the run.
    """
    with session_scope(engine) as session:
        run = session.get(ScheduleRun, run_id)
        if run is None or not run.schedule.webhook_url:
            return None
        url, summary = run.schedule.webhook_url, _summary(run)
    attempt = post_summary(url, summary, timeout=timeout)  # outside any transaction: it may take a while
    retrying = attempt.transient and retries_left
    outcome = "delivered" if attempt.delivered else "retrying" if retrying else "failed"
    with session_scope(engine) as session:
        run = session.get(ScheduleRun, run_id)
        if run is None:  # deleted meanwhile: nothing to record
            return attempt
        tries = int(((run.details or {}).get("webhook") or {}).get("attempts", 0)) + 1
        record = {
            "outcome": outcome,
            "attempts": tries,
            "status": attempt.status,
            "error": attempt.error,
            "at": datetime.now(UTC).isoformat(),
        }
        run.details = {**(run.details or {}), "webhook": record}
    if outcome == "delivered":
        log.info("webhook %s for schedule run %d delivered (try %d)", url, run_id, tries)
    elif outcome == "retrying":
        log.warning(
            "webhook %s for schedule run %d, try %d: %s; trying again", url, run_id, tries, attempt.error
        )
    else:
        log.error("webhook %s for schedule run %d failed on try %d: %s", url, run_id, tries, attempt.error)
    return attempt


def notify_with_retries(engine: Engine, run_id: int, *, delays: tuple[float, ...] = (1.0, 2.0, 4.0)) -> bool:
    """`notify` in this process, tried again after each of `delays` while it fails transiently; delivered?

    For callers without a Celery worker to hand the webhook to; the service's task retries through
    Celery instead (workers.tasks.schedules_notify).
    """
    attempt = notify(engine, run_id, retries_left=bool(delays))
    for index, delay in enumerate(delays):
        if attempt is None or not attempt.transient:
            break
        time.sleep(delay)
        attempt = notify(engine, run_id, retries_left=index + 1 < len(delays))
    return attempt is not None and attempt.delivered
