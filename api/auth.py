"""Writes need `Authorization: Bearer <key>` with a read-write key; reads are open."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from soce.db.apikeys import verify_api_key
from soce.db.engine import session_scope
from soce.db.models import ApiKey

bearer = HTTPBearer(auto_error=False, description="an API key from `soce apikey create --name NAME`")
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


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
