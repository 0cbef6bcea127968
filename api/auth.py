"""Writes need `Authorization: Bearer <key>` with a read-write key. Reads under /v1/ are open, unless
SOCE_DASHBOARD_PUBLIC_READ is false: then they need a key (read-only or read-write) or a signed-in
dashboard session."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.dashboard_session import COOKIE, current_user
from soce.db.apikeys import verify_api_key
from soce.db.engine import session_scope
from soce.db.models import ApiKey

bearer = HTTPBearer(auto_error=False, description="an API key from `soce apikey create --name NAME`")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_READS = frozenset({"GET", "HEAD"})


def require_writer(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> ApiKey:
    """The read-write key the request carries; 401 when it is missing or unknown, 403 when read-only."""
    if credentials is None or not credentials.credentials:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "this endpoint writes and needs an API key: send 'Authorization: Bearer <key>' "
            "(create one with `soce apikey create --name NAME`)",
            headers=_CHALLENGE,
        )
    # its own short transaction, so the key's last use is recorded whatever the request does next
    with session_scope(request.app.state.engine) as session:
        key = verify_api_key(session=session, key=credentials.credentials)
    if key is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "the API key is unknown or revoked", headers=_CHALLENGE
        )
    if key.read_only:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"API key {key.name!r} is read-only; this endpoint writes and needs a read-write key",
        )
    return key


Writer = Annotated[ApiKey, Depends(require_writer)]


def _known_key(request: Request, key: str) -> ApiKey | None:
    with session_scope(request.app.state.engine) as session:
        return verify_api_key(session=session, key=key)


def _signed_in(request: Request) -> bool:
    with Session(request.app.state.engine) as session:
        return current_user(request, session) is not None


async def require_reader(request: Request) -> None:
    """Let a read under /v1/ through: always while reading is public (SOCE_DASHBOARD_PUBLIC_READ, the
    default), else with a valid API key of either kind or a signed-in dashboard session (401 otherwise).

    Installed on the whole app: other paths (health, metrics, the dashboard's own pages) and other
    methods (writes check their key themselves) pass untouched, at no cost.
    """
    if request.method not in _READS or request.app.state.settings.dashboard_public_read:
        return
    path, root = request.scope["path"], request.scope.get("root_path", "")
    if not path.removeprefix(root).startswith("/v1/"):  # the path the app routes on, as Starlette does
        return
    credentials = await bearer(request)
    if credentials is not None and credentials.credentials:
        if await run_in_threadpool(_known_key, request, credentials.credentials) is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, "the API key is unknown or revoked", headers=_CHALLENGE
            )
        return
    if request.cookies.get(COOKIE) and await run_in_threadpool(_signed_in, request):
        return
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "reading is not public on this server: send 'Authorization: Bearer <key>' with a read-only or "
        "read-write key (create one with `soce apikey create --name NAME`), or sign in to the dashboard",
        headers=_CHALLENGE,
    )
