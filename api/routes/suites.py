"""Suites: benchmark specs stored once per content."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.auth import Writer
from api.deps import NOT_ALLOWED, SessionDep, SettingsDep, allowed_path
from api.errors import BODY_STATUSES, READ_STATUSES, WRITE_STATUSES, error_responses, invalid, not_found
from api.schemas import SuiteCreate, SuitePublic
from soce.config import Settings, path_under_roots
from soce.db import crud
from soce.db.models import Suite
from soce.errors import SuiteError
from soce.schemas.run import RowId
from soce.schemas.suite import SuiteSpec, canonical_hash

router = APIRouter(prefix="/v1/suites", tags=["suites"])
MAX_SUITE_BYTES = 1 << 20  # a suite lists tasks by name: far below this


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SuitePublic,
    responses={
        200: {"model": SuitePublic, "description": "a suite of the same content was stored before: its row"},
        **error_responses(*WRITE_STATUSES, *BODY_STATUSES),
    },
)
def create_suite(
    body: SuiteCreate, session: SessionDep, response: Response, _key: Writer, settings: SettingsDep
) -> SuitePublic:
    """Store a suite given inline or as the path of a YAML under SOCE_CHECKPOINT_ROOTS on the server; the
    same content returns its row (200). A suite's `include_path` (its task YAMLs, which the workers
    load) must lie under those folders too."""
    spec = body.spec if body.path is None else _suite_file(body.path, settings)
    assert spec is not None
    _check_include_path(spec, body.path, settings)
    data = spec.model_dump(mode="json")
    digest = canonical_hash(data)
    row = crud.get_suite_by_hash(session=session, content_hash=digest)
    if row is not None:
        response.status_code = status.HTTP_200_OK
        return SuitePublic.of(row)
    row = Suite(name=spec.name, spec=data, content_hash=digest)
    session.add(row)
    try:
        session.commit()
    except IntegrityError:  # stored by a concurrent request meanwhile
        session.rollback()
        row = crud.get_suite_by_hash(session=session, content_hash=digest)
        if row is None:
            raise
        response.status_code = status.HTTP_200_OK
    return SuitePublic.of(row)


def _suite_file(raw: str, settings: Settings) -> SuiteSpec:
    """The suite in a YAML file under the checkpoint roots. The file is opened only once it is known to
    be a regular file there (never a FIFO or a device), and errors name the path, never its content."""
    loc = ["body", "path"]
    path = allowed_path(raw, settings, loc)
    if not path.exists():
        raise invalid(loc, f"{raw}: no such suite file on the server", "path_not_found")
    if not path.is_file():
        raise invalid(loc, f"{raw}: not a regular file (a suite is a YAML file)")
    if path.stat().st_size > MAX_SUITE_BYTES:
        raise invalid(loc, f"{raw}: larger than {MAX_SUITE_BYTES} bytes, too large for a suite YAML")
    try:
        return SuiteSpec.from_file(path)
    except SuiteError:
        msg = f"{raw}: not a valid suite file (send the suite inline as 'spec' to see what is wrong)"
        raise invalid(loc, msg, "SuiteError") from None


def _check_include_path(spec: SuiteSpec, file: str | None, settings: Settings) -> None:
    """A suite's task YAMLs (its include_path, which the workers load) must lie under the roots too; for a
    suite file the message names the file, not the folder written in it."""
    if spec.include_path is None:
        return
    if file is None:
        allowed_path(spec.include_path, settings, ["body", "spec", "include_path"])
    elif path_under_roots(spec.include_path, settings.checkpoint_roots) is None:
        msg = (
            f"{file}: its include_path lies outside the folders this server may read (SOCE_CHECKPOINT_ROOTS)"
        )
        raise invalid(["body", "path"], msg, NOT_ALLOWED)


@router.get("", response_model=list[SuitePublic], responses=error_responses(*READ_STATUSES))
def list_suites(session: SessionDep) -> list[SuitePublic]:
    return [SuitePublic.of(r) for r in session.scalars(select(Suite).order_by(Suite.id))]


@router.get(
    "/{suite_id}",
    response_model=SuitePublic,
    responses=error_responses(*READ_STATUSES, 404, 422, notes={404: "no suite has this id"}),
)
def get_suite(suite_id: RowId, session: SessionDep) -> SuitePublic:
    row = session.get(Suite, suite_id)
    if row is None:
        raise not_found(f"suite {suite_id}")
    return SuitePublic.of(row)
