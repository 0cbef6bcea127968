"""Dashboard sign-in: an API key posted once, then a signed cookie naming the key and a CSRF token.

The cookie holds `key id . CSRF token . issued time . HMAC-SHA256` (never the key). Each request re-reads
the key row, so revoking a key ends its sessions; changes need a read-write key and a POST carrying the
session's CSRF token from the same origin.

The signing key comes from SOCE_DASHBOARD_SECRET or, without it, from the app database, where the first
API process to need one stores a random value: every process of a deployment signs with the same key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from fastapi import HTTPException, Request, status
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from soce.db.engine import session_scope
from soce.db.models import ApiKey, AppSecret
from soce.errors import DatabaseError

COOKIE = "soce_session"
MAX_AGE_SECONDS = 12 * 3600
SECRET_NAME = "dashboard_session"  # its row in app_secrets
_secret_lock = threading.Lock()


@dataclass(frozen=True)
class DashboardUser:
    """The signed-in key: its name, whether it may change things, and the session's CSRF token."""

    key_id: int
    name: str
    read_only: bool
    csrf: str


def signing_key(secret: str) -> bytes:
    """The HMAC key derived from a configured or stored secret (any length in, 32 bytes out)."""
    return hashlib.sha256(secret.encode()).digest()


def stored_secret(engine: Engine, name: str = SECRET_NAME) -> str:
    """The secret stored under `name` in the app database, generated and stored first if there is none.

    Processes starting together may each try to store one: the primary key keeps the first, and every
    process returns what is stored, so they all agree.
    """
    with session_scope(engine) as session:
        row = session.get(AppSecret, name)
        if row is not None:
            return row.value
    try:
        with session_scope(engine) as session:
            session.add(AppSecret(name=name, value=secrets.token_urlsafe(32)))
    except DatabaseError as e:
        if not isinstance(e.__cause__, IntegrityError):
            raise
    with session_scope(engine) as session:
        row = session.get(AppSecret, name)
        if row is None:  # deleted between our insert and this read
            raise DatabaseError(f"app secret {name!r} vanished from the app database while being stored")
        return row.value


def session_secret(request: Request) -> bytes:
    """The key that signs this app's dashboard cookies: SOCE_DASHBOARD_SECRET's when set (create_app
    derives it), else the app database's shared secret, read once per process on first use."""
    state = request.app.state
    if state.dashboard_secret is None:
        with _secret_lock:
            if state.dashboard_secret is None:
                state.dashboard_secret = signing_key(stored_secret(state.engine))
    return state.dashboard_secret


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
