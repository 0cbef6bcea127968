"""Jobs: created queued, enqueued by task name after the commit; read back with the workers' results."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError

from api import job_reads
from api.auth import Writer
from api.deps import OptunaDep, QueueDep, SessionDep
from api.errors import BODY_STATUSES, READ_STATUSES, WRITE_STATUSES, error_responses, invalid, not_found
from api.schemas import (
    JobCreate,
    JobDetail,
    JobPage,
    JobPublic,
    JobStateName,
    TrialPage,
    TrialPublic,
)
from api.trials import OptunaStudies
from soce.db import crud
from soce.db.models import Job, Suite
from soce.errors import SoceError
from soce.flow import JobState
from soce.schemas.report import stored_report
from soce.schemas.run import MAX_NAME_LENGTH, MAX_ROW_ID, RowId, StoredStr

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

IdempotencyKey = Annotated[
    StoredStr | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="a retry with the same key returns the job the first request created",
    ),
]


def _same_request(job: Job, body: JobCreate, candidate_ids: list[int]) -> bool:
    return (
        job.suite_id == body.suite_id
        and [c.id for c in job.candidates] == candidate_ids
        and dict(job.recipe) == body.search_settings()
    )


def _replay(job: Job, body: JobCreate, candidate_ids: list[int], key: str, response: Response) -> JobPublic:
    if not _same_request(job, body, candidate_ids):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"Idempotency-Key {key!r} was used for job {job.id} with a different request; use a new key",
        )
    response.status_code = status.HTTP_200_OK
    return JobPublic.of(job)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobPublic,
    responses={
        200: {"model": JobPublic, "description": "a retry with the same Idempotency-Key: the job it created"},
        **error_responses(
            *WRITE_STATUSES,
            *BODY_STATUSES,
            409,
            notes={
                409: "the Idempotency-Key was used for a different request",
                503: "the app database cannot be reached, or the broker cannot: then the job is stored "
                "as failed",
            },
        ),
    },
)
def create_job(
    body: JobCreate,
    session: SessionDep,
    queue: QueueDep,
    response: Response,
    _key: Writer,
    idempotency_key: IdempotencyKey = None,
) -> JobPublic:
    """Store a job in state queued, then send `soce.job.start` to the cpu queue (201; a replay is 200)."""
    suite = session.get(Suite, body.suite_id)
    if suite is None:
        raise invalid(["body", "suite_id"], f"suite {body.suite_id} does not exist", "not_found")
    if body.candidate_ids is not None:
        candidates = crud.get_candidates(session=session, ids=body.candidate_ids)
        unknown = sorted(set(body.candidate_ids) - {c.id for c in candidates})
        if unknown:
            raise invalid(
                ["body", "candidate_ids"],
                f"candidate(s) {', '.join(map(str, unknown))} are not registered",
                "not_found",
            )
        loc: list[str | int] = ["body", "candidate_ids"]
    else:
        candidates = crud.list_candidates(session=session, tag=body.tag)
        loc = ["body", "tag"]
        if len(candidates) < 2:
            raise invalid(
                loc, f"tag {body.tag!r} marks {len(candidates)} candidate(s); a soup needs 2 or more"
            )
    failed = [f"{c.id} ({c.error})" for c in candidates if c.error]
    if failed:
        raise invalid(loc, f"candidate(s) cannot be used: {'; '.join(failed)}")
    ids = [c.id for c in candidates]

    if idempotency_key is not None:
        earlier = crud.get_job_by_idempotency_key(session=session, key=idempotency_key)
        if earlier is not None:
            return _replay(earlier, body, ids, idempotency_key, response)
    job = crud.create_job(
        session=session,
        name=body.name,
        suite=suite,
        candidates=candidates,
        recipe=body.search_settings(),
        idempotency_key=idempotency_key,
    )
    try:
        session.commit()
    except IntegrityError:  # a concurrent retry with the same key committed first
        session.rollback()
        earlier = crud.get_job_by_idempotency_key(session=session, key=idempotency_key or "")
        if earlier is None:
            raise
        return _replay(earlier, body, ids, idempotency_key or "", response)

    try:
        queue.start_job(job.id)
    except Exception as e:  # broker down: the job must not sit queued with no message behind it
        log.error("job %d could not be enqueued: %s", job.id, e)
        job.state, job.error = JobState.FAILED, f"could not be enqueued ({type(e).__name__}: {e})"
        session.commit()
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"job {job.id} was stored but the queue at the broker is unreachable; it is marked failed, "
            "submit it again (with a new Idempotency-Key) when the broker is back",
        ) from None
    return JobPublic.of(job)


def _json(model: BaseModel) -> Response:
    """A built (so validated) response model as JSON; returned as is, FastAPI does not validate it again."""
    return Response(model.model_dump_json(), media_type="application/json")


# The two reads below take what they need from the request instead of dependencies (a session, the
# Optuna studies): the bodies come from api/job_reads.py, on a connection held only while it queries.
# Like every route here they are sync functions: FastAPI runs them in its thread pool, so Optuna's
# blocking reads never hold up the event loop.
@router.get("", response_model=JobPage, responses=error_responses(*READ_STATUSES, 422))
def list_jobs(
    request: Request,
    state: Annotated[JobStateName | None, Query(description="only jobs in this state")] = None,
    name: Annotated[
        StoredStr | None,
        Query(min_length=1, max_length=MAX_NAME_LENGTH, description="only jobs whose name contains this"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
) -> Response:
    """Jobs, newest first, a page at a time, with the total number that match."""
    items, total = job_reads.read(
        request.app.state.engine, job_reads.job_page, state=state, name=name, limit=limit, offset=offset
    )
    # JobPage's JSON, written directly: the items are JobPublic's fields in its order, from typed
    # columns, so validating them again would only cost time (the tests compare with the models)
    page = {"items": items, "total": total, "limit": limit, "offset": offset}
    return Response(orjson.dumps(page, option=orjson.OPT_UTC_Z), media_type="application/json")


def _get_job(session: SessionDep, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise not_found(f"job {job_id}")
    return job


def _recorded_best(analysis: dict[str, Any], study_name: str) -> int | None:
    """The best trial's number as the job's finished search recorded it (workers' analysis["search"])."""
    search = analysis.get("search")
    if not isinstance(search, dict) or search.get("study") != study_name:
        return None
    number = search.get("best_trial")
    return number if isinstance(number, int) and not isinstance(number, bool) else None


@router.get(
    "/{job_id}",
    response_model=JobDetail,
    responses=error_responses(*READ_STATUSES, 404, 422, notes={404: "no job has this id"}),
)
def get_job(job_id: RowId, request: Request) -> Response:
    """A job with everything the workers recorded: progress, analysis, best trial and the latest soup."""
    fields = job_reads.read(request.app.state.engine, job_reads.job_detail, job_id=job_id)
    if fields is None:
        raise not_found(f"job {job_id}")
    optuna: OptunaStudies = request.app.state.optuna
    analysis = fields["analysis"]
    best = None
    study_name = fields["study_name"]
    if study_name:
        try:
            best = optuna.best_trial(study_name, number=_recorded_best(analysis or {}, study_name))
        except SoceError as e:  # the job is still worth showing without it
            log.warning("job %d: best trial unavailable: %s", job_id, e)
    report = stored_report(analysis)
    detail = JobDetail(
        **fields,
        verdict=report.verdict if report else None,
        decision=report.decision if report else None,
        report=report,
        score_matrix=((analysis or {}).get("scores") or {}).get("dev"),
        correlations=(analysis or {}).get("correlation"),
        experts=(analysis or {}).get("experts"),
        best_trial=best,
    )
    return _json(detail)


@router.get(
    "/{job_id}/trials",
    response_model=TrialPage,
    responses=error_responses(
        *READ_STATUSES,
        404,
        422,
        notes={404: "no job has this id", 503: "the app database or Optuna's cannot be reached"},
    ),
)
def list_trials(
    job_id: RowId,
    session: SessionDep,
    optuna: OptunaDep,
    state: Annotated[
        str | None,
        Query(pattern="^(?i:running|complete|pruned|fail|waiting)$", description="only trials in this state"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ROW_ID)] = 0,
) -> TrialPage:
    """The job's Optuna trials by number, read from Optuna's own database."""
    job = _get_job(session, job_id)
    found = optuna.trials(job.study_name, state=state, limit=limit, offset=offset) if job.study_name else None
    if found is None:  # no search has started yet
        return TrialPage(
            study_name=job.study_name, directions=[], items=[], total=0, limit=limit, offset=offset
        )
    return TrialPage(
        study_name=job.study_name,
        directions=found.directions,
        items=[TrialPublic(**t) for t in found.items],
        total=found.total,
        limit=limit,
        offset=offset,
    )


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses=error_responses(
        *WRITE_STATUSES,
        404,
        409,
        422,
        notes={404: "no job has this id", 409: "the job has already finished"},
    ),
)
def cancel_job(job_id: RowId, session: SessionDep, _key: Writer) -> JobPublic:
    """Mark an unfinished job cancelled (the workers stop at their next check); 409 if it has finished."""
    job = _get_job(session, job_id)
    cancelled = crud.cancel_job(session=session, job_id=job_id)
    session.commit()
    session.refresh(job)
    if not cancelled:
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} has already finished ({job.state})")
    return JobPublic.of(job)
