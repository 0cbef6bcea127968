"""Candidates: checkpoint folders registered once, checked on the way in, hashed on the cpu queue."""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, status

from api.auth import Writer
from api.broker import JobQueue
from api.deps import NOT_ALLOWED, QueueDep, SessionDep, SettingsDep, allowed_path
from api.errors import BODY_STATUSES, READ_STATUSES, WRITE_STATUSES, error_responses, invalid, not_found
from api.schemas import CandidateCreate, CandidatePublic, Tag
from soce.checkpoints import ARCHITECTURE_FIELDS, Checkpoint, architecture_summary, check_compatibility
from soce.config import Settings, path_under_roots
from soce.db import crud
from soce.db.models import Candidate
from soce.errors import CheckpointError, SoceError
from soce.schemas.run import RowId

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/candidates", tags=["candidates"])


def _family(architecture: dict[str, Any] | None) -> str:
    """Candidates with equal architecture fields must be mergeable with each other."""
    arch = architecture or {}
    return json.dumps({k: arch.get(k) for k in ARCHITECTURE_FIELDS}, sort_keys=True)


def _open(raw: str, index: int, settings: Settings) -> tuple[Path, Checkpoint]:
    """The folder, resolved and checked to lie under the checkpoint roots before anything in it is read."""
    loc = ["body", "paths", index]
    path = allowed_path(raw, settings, loc)
    if not path.exists():
        raise invalid(loc, f"{raw}: no such folder on the server", "path_not_found")
    if not path.is_dir():
        raise invalid(loc, f"{raw}: not a folder (a candidate is a Hugging Face model folder)")
    # config and tokenizer files are read by name: a link among them must not lead out of the roots
    # (shards are held to the folder itself when opened)
    try:
        entries = sorted(path.iterdir())
    except OSError as e:
        raise invalid(loc, f"{raw}: the server cannot list this folder ({e.strerror})") from None
    for entry in entries:
        if entry.is_symlink() and path_under_roots(entry, settings.checkpoint_roots) is None:
            raise invalid(
                loc,
                f"{raw}: {entry.name} links outside the folders this server may read (SOCE_CHECKPOINT_ROOTS)",
                NOT_ALLOWED,
            )
    try:
        return path, Checkpoint.open(path)
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


def _enqueue_hashing(queue: JobQueue, candidate_ids: list[int]) -> None:
    """Send one hash message per candidate. With the broker down the registration stands: the hashes
    stay null until the score step of a job over these candidates fills them in."""
    for i, candidate_id in enumerate(candidate_ids):
        try:
            queue.hash_candidate(candidate_id)
        except Exception as e:  # the broker is down: the others would fail (and wait) the same way
            unsent = ", ".join(map(str, candidate_ids[i:]))
            log.error("candidate(s) %s could not be enqueued for hashing: %s", unsent, e)
            return


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=list[CandidatePublic],
    responses=error_responses(*WRITE_STATUSES, *BODY_STATUSES),
)
def register_candidates(
    body: CandidateCreate, session: SessionDep, queue: QueueDep, _key: Writer, settings: SettingsDep
) -> list[CandidatePublic]:
    """Register model folders: each must lie under SOCE_CHECKPOINT_ROOTS, exist, hold safetensors weights
    and be compatible with the registered candidates of its architecture. A folder registered before
    keeps its row and gains the tags. Each is then hashed by a cpu worker (`content_hash` is null until
    then).
    """
    with ExitStack() as stack:
        opened: list[tuple[Path, Checkpoint]] = []
        for i, raw in enumerate(body.paths):
            path, ckpt = _open(raw, i, settings)
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
    _enqueue_hashing(queue, [row.id for row in rows])
    return [CandidatePublic.of(r) for r in rows]


@router.get("", response_model=list[CandidatePublic], responses=error_responses(*READ_STATUSES, 422))
def list_candidates(
    session: SessionDep,
    tag: Annotated[Tag | None, Query(description="only candidates with this tag")] = None,
) -> list[CandidatePublic]:
    """Registered candidates, oldest first."""
    return [CandidatePublic.of(r) for r in crud.list_candidates(session=session, tag=tag)]


@router.get(
    "/{candidate_id}",
    response_model=CandidatePublic,
    responses=error_responses(*READ_STATUSES, 404, 422, notes={404: "no candidate has this id"}),
)
def get_candidate(candidate_id: RowId, session: SessionDep) -> CandidatePublic:
    row = session.get(Candidate, candidate_id)
    if row is None:
        raise not_found(f"candidate {candidate_id}")
    return CandidatePublic.of(row)
