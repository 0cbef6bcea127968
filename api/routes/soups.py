"""Soups: the folder a job wrote, with its model card and replayable recipe."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter

from api.deps import SessionDep
from api.errors import READ_STATUSES, error_responses, not_found
from api.schemas import SoupPublic
from soce.db.models import Soup
from soce.schemas.run import RowId

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/soups", tags=["soups"])
MAX_TEXT_BYTES = 1 << 20  # a model card or recipe larger than this is not a card: leave it out


def _read_text(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_TEXT_BYTES:
            log.warning("%s: larger than %d bytes; not returned", path, MAX_TEXT_BYTES)
            return None
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


@router.get(
    "/{soup_id}",
    response_model=SoupPublic,
    responses=error_responses(*READ_STATUSES, 404, 422, notes={404: "no soup has this id"}),
)
def get_soup(soup_id: RowId, session: SessionDep) -> SoupPublic:
    """A soup with its weights, scores and lineage, and the README.md and soce_recipe.yml of its folder."""
    row = session.get(Soup, soup_id)
    if row is None:
        raise not_found(f"soup {soup_id}")
    folder = Path(row.path)
    return SoupPublic.of(
        row, card=_read_text(folder / "README.md"), recipe=_read_text(folder / "soce_recipe.yml")
    )
