"""Typed dependencies: the request's database session, settings, queue and Optuna tables."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from api.broker import JobQueue
from api.optuna_tables import OptunaTables
from soce.config import Settings


def get_session(request: Request) -> Iterator[Session]:
    """A session per request; handlers that write commit it themselves (and enqueue after that)."""
    session = Session(request.app.state.engine, expire_on_commit=False)
    try:
        yield session
    finally:
        session.close()


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_queue(request: Request) -> JobQueue:
    return request.app.state.queue


def get_optuna(request: Request) -> OptunaTables:
    return request.app.state.optuna


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
QueueDep = Annotated[JobQueue, Depends(get_queue)]
OptunaDep = Annotated[OptunaTables, Depends(get_optuna)]
