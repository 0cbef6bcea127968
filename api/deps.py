"""Typed dependencies: the request's database session, settings, queue and Optuna's studies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from api.broker import JobQueue
from api.trials import OptunaStudies
from soce.config import Settings


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
