"""Typed dependencies: the request's database session, settings, queue and Optuna's studies; and the
check that a server path named in a request lies under SOCE_CHECKPOINT_ROOTS."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from api.broker import JobQueue
from api.errors import invalid
from api.trials import OptunaStudies
from soce.config import Settings, path_under_roots


async def get_session(request: Request) -> AsyncIterator[Session]:
    """A session per request; handlers that write commit it themselves (and enqueue after that).

    Async, so that making it costs no trip to the thread pool (a session connects only when first
    used); closing it goes there only when it still holds a connection to roll back and give back.
    """
    session = Session(request.app.state.engine, expire_on_commit=False)
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


# The dependencies below do no I/O: async, so that FastAPI calls them on the event loop instead of
# sending each to the thread pool.
async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue


async def get_optuna(request: Request) -> OptunaStudies:
    return request.app.state.optuna


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
OptunaDep = Annotated[OptunaStudies, Depends(get_optuna)]

NOT_ALLOWED = "path_not_allowed"  # the error type of a path outside the checkpoint roots


def allowed_path(raw: str, settings: Settings, loc: Sequence[str | int]) -> Path:
    """`raw` with symlinks and '..' resolved, when it is absolute and lies under one of the settings'
    checkpoint roots; otherwise a 422 at `loc` that says how to set the roots. Nothing is opened here."""
    if not Path(raw).is_absolute():  # '~/x' too: a client cannot know the server's home folders
        raise invalid(loc, f"{raw}: give an absolute path on the server")
    roots = settings.checkpoint_roots
    if not roots:
        raise invalid(
            loc,
            f"{raw}: this server reads no files until SOCE_CHECKPOINT_ROOTS names the folders it may read "
            "(absolute paths separated by ':', or a JSON list)",
            NOT_ALLOWED,
        )
    path = path_under_roots(raw, roots)
    if path is None:
        shown = ", ".join(str(r) for r in roots)
        msg = f"{raw}: not under the folders this server may read ({shown}; SOCE_CHECKPOINT_ROOTS)"
        raise invalid(loc, msg, NOT_ALLOWED)
    return path
