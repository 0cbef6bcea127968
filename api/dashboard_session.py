"""Dashboard sign-in: an API key posted once, then a signed cookie naming the key and a CSRF token.

The cookie holds `key id . CSRF token . issued time . HMAC-SHA256` (never the key). Each request re-reads
the key row, so revoking a key ends its sessions; changes need a read-write key and a POST carrying the
session's CSRF token from the same origin.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from fastapi import HTTPException, Request, status
from sqlalchemy.orm import Session

from soce.db.models import ApiKey

COOKIE = "soce_session"
MAX_AGE_SECONDS = 12 * 3600


@dataclass(frozen=True)
class DashboardUser:
    """The signed-in key: its name, whether it may change things, and the session's CSRF token."""

    key_id: int
    name: str
    read_only: bool
    csrf: str


def session_secret(request: Request) -> bytes:
    return request.app.state.dashboard_secret


def _sign(secret: bytes, payload: str) -> str:
    return hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()


def make_cookie(secret: bytes, key_id: int, *, now: float | None = None) -> str:
    """A new session for key `key_id` with a fresh CSRF token."""
    payload = f"{key_id}.{secrets.token_urlsafe(24)}.{int(now or time.time())}"
    return f"{payload}.{_sign(secret, payload)}"


def read_cookie(secret: bytes, value: str | None, *, now: float | None = None) -> tuple[int, str] | None:
    """(key id, CSRF token) of a valid, unexpired cookie, else None."""
    if not value or value.count(".") != 3:
        return None
    payload, signature = value.rsplit(".", 1)
    if not hmac.compare_digest(signature, _sign(secret, payload)):
        return None
    key_id, csrf, issued = payload.split(".")
    try:
        if (now or time.time()) - int(issued) > MAX_AGE_SECONDS:
            return None
        return int(key_id), csrf
    except ValueError:
        return None


def current_user(request: Request, session: Session) -> DashboardUser | None:
    """The signed-in key of this request, or None (no cookie, a bad one, or a revoked key)."""
    found = read_cookie(session_secret(request), request.cookies.get(COOKIE))
    if found is None:
        return None
    key = session.get(ApiKey, found[0])
    if key is None or key.revoked:
        return None
    return DashboardUser(key_id=key.id, name=key.name, read_only=key.read_only, csrf=found[1])


def _same_origin(request: Request) -> bool:
    """The Origin (or, without one, the Referer) names this server; a browser sends one on a form POST."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source:
        return False
    own = f"{request.url.scheme}://{request.url.netloc}"
    return source == own or source.startswith(own + "/")


def require_change(request: Request, user: DashboardUser | None, csrf: str) -> DashboardUser:
    """The signed-in read-write user of a same-origin POST carrying the session's CSRF token."""
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "sign in with a read-write API key to do this")
    if user.read_only:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"API key {user.name!r} is read-only")
    if not _same_origin(request) or not hmac.compare_digest(csrf, user.csrf):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the form is stale or from another site: reload it")
    return user
