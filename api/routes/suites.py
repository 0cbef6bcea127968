"""Suites: benchmark specs stored once per content."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.auth import Writer
from api.deps import SessionDep
from api.errors import invalid, not_found
from api.schemas import SuiteCreate, SuitePublic
from soce.db import crud
from soce.db.models import Suite
from soce.errors import SuiteError
from soce.schemas.suite import SuiteSpec, canonical_hash

router = APIRouter(prefix="/v1/suites", tags=["suites"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SuitePublic)
def create_suite(body: SuiteCreate, session: SessionDep, response: Response, _key: Writer) -> SuitePublic:
    """Store a suite given inline or as a YAML path on the server; the same content returns its row (200)."""
    spec = body.spec
    if body.path is not None:
        try:
            spec = SuiteSpec.from_file(body.path)
        except SuiteError as e:
            raise invalid(["body", "path"], str(e), "SuiteError") from None
    assert spec is not None
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


@router.get("", response_model=list[SuitePublic])
def list_suites(session: SessionDep) -> list[SuitePublic]:
    return [SuitePublic.of(r) for r in session.scalars(select(Suite).order_by(Suite.id))]


@router.get("/{suite_id}", response_model=SuitePublic)
def get_suite(suite_id: int, session: SessionDep) -> SuitePublic:
    row = session.get(Suite, suite_id)
    if row is None:
        raise not_found(f"suite {suite_id}")
    return SuitePublic.of(row)
