"""Candidates: checkpoint folders registered once, checked on the way in, hashed in the background."""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Query, Request, status
from sqlalchemy import Engine

from api.auth import Writer
from api.deps import SessionDep
from api.errors import invalid, not_found
from api.schemas import CandidateCreate, CandidatePublic, Tag
from soce.checkpoints import (
    ARCHITECTURE_FIELDS,
    Checkpoint,
    DigestCache,
    architecture_summary,
    check_compatibility,
    checkpoint_hash,
)
from soce.config import Settings
from soce.db import crud
from soce.db.engine import session_scope
from soce.db.models import Candidate
from soce.errors import CheckpointError, SoceError

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/candidates", tags=["candidates"])


def _family(architecture: dict[str, Any] | None) -> str:
    """Candidates with equal architecture fields must be mergeable with each other."""
    arch = architecture or {}
    return json.dumps({k: arch.get(k) for k in ARCHITECTURE_FIELDS}, sort_keys=True)


def _open(raw: str, index: int) -> tuple[Path, Checkpoint]:
    loc = ["body", "paths", index]
    path = Path(raw).expanduser()
    if not path.is_absolute():
        raise invalid(loc, f"{raw}: give an absolute path on the server")
    if not path.exists():
        raise invalid(loc, f"{raw}: no such folder on the server", "path_not_found")
    if not path.is_dir():
        raise invalid(loc, f"{raw}: not a folder (a candidate is a Hugging Face model folder)")
    try:
        return path.resolve(), Checkpoint.open(path)
    except CheckpointError as e:
        raise invalid(loc, str(e), type(e).__name__) from None


def _registered_reference(
    session: SessionDep, family: str, skip: set[str], stack: ExitStack
) -> Checkpoint | None:
    """An already registered candidate of this family that still opens, to check newcomers against."""
    for row in crud.list_candidates(session=session):
        if row.error is None and row.path not in skip and _family(row.architecture) == family:
            try:
                return stack.enter_context(Checkpoint.open(row.path))
            except SoceError:
                continue  # moved or deleted since; another one may still be there
    return None


def hash_candidate(engine: Engine, settings: Settings, candidate_id: int, path: str) -> None:
    """Fill in the candidate's content hash (or why it cannot be hashed); runs after the response."""
    digest = error = None
    cache = DigestCache(settings.data_dir / "digests.sqlite" if settings.hash_cache else None)
    try:
        with Checkpoint.open(path) as ckpt:
            digest = checkpoint_hash(ckpt, cache)
    except SoceError as e:
        error = str(e)
    except Exception as e:  # the row must not stay "hashing" forever
        log.exception("hashing candidate %d (%s) failed", candidate_id, path)
        error = f"hashing failed: {type(e).__name__}: {e}"
    finally:
        cache.close()
    try:
        with session_scope(engine) as session:
            row = session.get(Candidate, candidate_id)
            if row is not None:
                row.content_hash, row.error = digest, error
    except SoceError:
        log.exception("could not store the hash of candidate %d", candidate_id)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=list[CandidatePublic])
def register_candidates(
    body: CandidateCreate, session: SessionDep, background: BackgroundTasks, request: Request, _key: Writer
) -> list[CandidatePublic]:
    """Register model folders: each must exist, hold safetensors weights and be compatible with the
    registered candidates of its architecture. A folder registered before keeps its row and gains the tags.
    """
    with ExitStack() as stack:
        opened: list[tuple[Path, Checkpoint]] = []
        for i, raw in enumerate(body.paths):
            path, ckpt = _open(raw, i)
            stack.enter_context(ckpt)
            if any(path == p for p, _ in opened):
                raise invalid(["body", "paths", i], f"{raw}: listed more than once")
            opened.append((path, ckpt))
        families: dict[str, list[Checkpoint]] = {}
        for _path, ckpt in opened:
            families.setdefault(_family(architecture_summary(ckpt)), []).append(ckpt)
        new_paths = {str(p) for p, _ in opened}
        for family, members in families.items():
            reference = _registered_reference(session, family, new_paths, stack)
            report = check_compatibility(([reference] if reference else []) + members, same_dtype=False)
            if not report.ok:
                problems = "; ".join(p.message for p in report.problems[:3])
                more = len(report.problems) - 3
                problems += f" ({more} more problems)" if more > 0 else ""
                raise invalid(["body", "paths"], f"incompatible candidates: {problems}", "incompatible")

        rows = []
        for path, ckpt in opened:
            row = crud.get_candidate_by_path(session=session, path=str(path))
            if row is None:
                row = Candidate(name=path.name, path=str(path))
                session.add(row)
            row.architecture = architecture_summary(ckpt)
            row.size_bytes = ckpt.nbytes
            row.content_hash = row.error = None  # hashed again: the folder's content may have changed
            for tag in body.tags:
                if tag not in row.tags:
                    row.tags.append(tag)
            rows.append(row)
        session.commit()
    for row in rows:
        background.add_task(
            hash_candidate, request.app.state.engine, request.app.state.settings, row.id, row.path
        )
    return [CandidatePublic.of(r) for r in rows]


@router.get("", response_model=list[CandidatePublic])
def list_candidates(
    session: SessionDep,
    tag: Annotated[Tag | None, Query(description="only candidates with this tag")] = None,
) -> list[CandidatePublic]:
    """Registered candidates, oldest first."""
    return [CandidatePublic.of(r) for r in crud.list_candidates(session=session, tag=tag)]


@router.get("/{candidate_id}", response_model=CandidatePublic)
def get_candidate(candidate_id: int, session: SessionDep) -> CandidatePublic:
    row = session.get(Candidate, candidate_id)
    if row is None:
        raise not_found(f"candidate {candidate_id}")
    return CandidatePublic.of(row)
