"""Liveness of the parts (/healthz) and numbers for Prometheus (/metrics)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text
from sqlalchemy.orm import Session

from api.metrics import TRIAL_BUCKETS, Exposition
from api.schemas import ComponentHealth, Health, WorkersHealth
from soce.db import crud

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])
WORKER_PING_SECONDS = 0.5


def _why(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(getattr(e, "orig", None) or e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _check_database(request: Request) -> ComponentHealth:
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return ComponentHealth(ok=True, detail="reachable")
    except Exception as e:
        return ComponentHealth(ok=False, detail=_why(e))


def _check_redis(request: Request) -> ComponentHealth:
    try:
        request.app.state.queue.ping()
        return ComponentHealth(ok=True, detail="reachable")
    except Exception as e:
        return ComponentHealth(ok=False, detail=_why(e))


def _check_workers(request: Request, redis_ok: bool) -> WorkersHealth:
    if not redis_ok:
        return WorkersHealth(ok=False, detail="not asked: the broker is unreachable")
    try:
        names = request.app.state.worker_probe()
    except Exception as e:
        return WorkersHealth(ok=False, detail=_why(e))
    if not names:
        return WorkersHealth(ok=False, detail=f"no worker answered a ping within {WORKER_PING_SECONDS} s")
    return WorkersHealth(ok=True, detail=f"{len(names)} worker(s) answered", names=names)


def _stalled_jobs(request: Request) -> int | None:
    settings = request.app.state.settings
    try:
        with Session(request.app.state.engine) as session:
            return crud.count_stalled_jobs(
                session=session, now=datetime.now(UTC), stall_seconds=settings.stall_seconds()
            )
    except Exception as e:
        log.warning("/healthz: stalled jobs not counted: %s", _why(e))
        return None


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "the database is unreachable"}},
)
def healthz(request: Request) -> Any:
    """Database, Redis and workers, each with a reason; 503 when the database is down, else 200."""
    database = _check_database(request)
    redis = _check_redis(request)
    workers = _check_workers(request, redis.ok)
    stalled = _stalled_jobs(request) if database.ok else None
    fine = redis.ok and workers.ok and not stalled
    overall = "down" if not database.ok else "ok" if fine else "degraded"
    health = Health(status=overall, database=database, redis=redis, workers=workers, stalled_jobs=stalled)
    return JSONResponse(health.model_dump(), status_code=503 if overall == "down" else 200)


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> PlainTextResponse:
    """Prometheus text format: jobs by state, queue depth, trial durations, score cache counters."""
    out = Exposition()
    up: dict[str, bool] = {}
    try:
        with Session(request.app.state.engine) as session:
            counts = crud.count_jobs_by_state(session=session)
        out.family("soce_jobs", "gauge", "Jobs by state.", [({"state": s}, n) for s, n in counts.items()])
        stalled = _stalled_jobs(request)
        if stalled is not None:
            out.family(
                "soce_jobs_stalled",
                "gauge",
                "Active jobs with no progress and no worker heartbeat for job_stall_seconds.",
                [({}, stalled)],
            )
        up["database"] = True
    except Exception as e:
        log.warning("/metrics: app database: %s", _why(e))
        up["database"] = False

    queue = request.app.state.queue
    try:
        depths = queue.depths()
        hits, misses = queue.score_cache_counts()
        out.family(
            "soce_queue_depth",
            "gauge",
            "Messages waiting in each Celery queue.",
            [({"queue": q}, n) for q, n in depths.items()],
        )
        out.family("soce_score_cache_hits_total", "counter", "Scores found in the score cache.", [({}, hits)])
        out.family(
            "soce_score_cache_misses_total", "counter", "Scores computed (not in the cache).", [({}, misses)]
        )
        ratio = hits / (hits + misses) if hits + misses else 0.0
        out.family("soce_score_cache_hit_ratio", "gauge", "Hits over lookups (0 before any).", [({}, ratio)])
        up["redis"] = True
    except Exception as e:
        log.warning("/metrics: redis: %s", _why(e))
        up["redis"] = False

    try:
        durations = request.app.state.optuna.complete_durations()
        out.histogram(
            "soce_trial_duration_seconds",
            "Wall time of complete Optuna trials, over all studies.",
            durations,
            TRIAL_BUCKETS,
        )
        up["optuna"] = True
    except Exception as e:
        log.warning("/metrics: optuna database: %s", _why(e))
        up["optuna"] = False

    out.family(
        "soce_up",
        "gauge",
        "Whether the part could be read for this scrape.",
        [({"component": c}, int(ok)) for c, ok in up.items()],
    )
    return PlainTextResponse(out.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
