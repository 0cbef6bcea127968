"""A registered candidate's content hash, computed on the cpu queue: the API only enqueues it.

Registration stores the row with no hash and sends `soce.candidates.hash`; a message that never
arrives (the broker was down) leaves the hash to the job's score step (workers.steps).
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine, update

from soce.checkpoints import Checkpoint, DigestCache, checkpoint_hash, default_digest_cache
from soce.db.engine import session_scope
from soce.db.models import Candidate
from soce.errors import SoceError

log = logging.getLogger(__name__)


def hash_candidate(engine: Engine, candidate_id: int, *, cache: DigestCache | None = None) -> str | None:
    """Hash the candidate's checkpoint and store it where its row has no hash yet; the hash, or None.

    A folder that cannot be read (moved, deleted, corrupt) leaves the reason in the row's `error`,
    which keeps the candidate out of new jobs. `cache` defaults to the settings' digest cache.
    """
    with session_scope(engine) as session:
        row = session.get(Candidate, candidate_id)
        if row is None:  # deleted since it was registered
            log.warning("candidate %d does not exist: nothing to hash", candidate_id)
            return None
        if row.content_hash is not None:  # a message delivered again, or the score step was first
            return row.content_hash
        path = row.path
    own_cache = cache is None
    cache = default_digest_cache() if cache is None else cache
    try:
        with Checkpoint.open(path) as ckpt:
            digest = checkpoint_hash(ckpt, cache)
    except (SoceError, OSError) as e:
        error = str(e) if isinstance(e, SoceError) else f"{path}: cannot be read ({e})"
        log.warning("candidate %d (%s) cannot be hashed: %s", candidate_id, path, error)
        _store(engine, candidate_id, error=error)
        return None
    finally:
        if own_cache:
            cache.close()
    _store(engine, candidate_id, content_hash=digest)
    return digest


def _store(engine: Engine, candidate_id: int, **values: str) -> None:
    """Set `values` on the candidate's row unless a hash was stored meanwhile."""
    with session_scope(engine) as session:
        session.execute(
            update(Candidate)
            .where(Candidate.id == candidate_id, Candidate.content_hash.is_(None))
            .values(**values)
        )
