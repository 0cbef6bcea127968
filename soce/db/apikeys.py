"""API keys: random tokens shown once; the database keeps only their SHA-256 and a short prefix.

A key carries 32 random bytes, so a plain SHA-256 is enough (a slow password hash protects guessable
secrets; these are not guessable) and a lookup by hash costs one indexed read.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from soce.db.models import ApiKey
from soce.errors import ApiKeyError

KEY_PREFIX = "soce_"
PREFIX_CHARS = len(KEY_PREFIX) + 8  # shown in listings to tell keys apart
LAST_USED_EVERY = timedelta(minutes=1)  # record use at most this often: reads need no write each


def generate_key() -> str:
    """A new key: our prefix and 32 random bytes, URL-safe base64."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The hex SHA-256 of a key, as stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(*, session: Session, name: str, read_only: bool = False) -> tuple[ApiKey, str]:
    """Store a new key under `name`; returns the row and the key, which is never stored or shown again."""
    name = name.strip()
    if not name or len(name) > 255:
        raise ApiKeyError("an API key name must have 1 to 255 characters")
    if session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
        raise ApiKeyError(f"an API key named {name!r} exists (revoked keys keep their names)")
    key = generate_key()
    row = ApiKey(name=name, prefix=key[:PREFIX_CHARS], key_hash=hash_key(key), read_only=read_only)
    session.add(row)
    session.flush()
    return row, key


def verify_api_key(*, session: Session, key: str, now: datetime | None = None) -> ApiKey | None:
    """The active key row matching `key`, or None (unknown or revoked); records when it was last used."""
    if not key.startswith(KEY_PREFIX):
        return None
    digest = hash_key(key)
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if row is None or row.revoked:  # found by hash: timing tells nothing of the key
        return None
    now = now or datetime.now(UTC)
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_EVERY:
        row.last_used_at = now
    return row


def list_api_keys(*, session: Session) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_api_key(*, session: Session, name: str, now: datetime | None = None) -> ApiKey:
    """Revoke the key named `name`; revoking a revoked key keeps its first revocation time."""
    row = session.scalar(select(ApiKey).where(ApiKey.name == name))
    if row is None:
        raise ApiKeyError(f"no API key is named {name!r}")
    if row.revoked_at is None:
        row.revoked_at = now or datetime.now(UTC)
    return row
