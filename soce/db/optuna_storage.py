"""Optuna's own database: opened as an RDBStorage for studies, and created or migrated by Optuna itself.

Optuna runs its own migrations and owns an `alembic_version` table, so its tables live in a database of
their own (`Settings.optuna_url()`), never beside ours. Optuna is imported inside the functions: importing
this module stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soce.config import Settings, get_settings
from soce.errors import DatabaseError, SearchError

if TYPE_CHECKING:
    from optuna.storages import RDBStorage


@dataclass(frozen=True)
class OptunaUpgrade:
    """What `upgrade_optuna_storage` did to Optuna's database."""

    database: str  # its URL, password hidden
    before: str  # Optuna's schema version before the upgrade (the head when the tables were just made)
    head: str  # the version this Optuna writes
    created: bool  # the tables did not exist and were made

    @property
    def changed(self) -> bool:
        return self.before != self.head


def optuna_storage(settings: Settings | None = None, *, url: str | None = None) -> RDBStorage:
    """Optuna's RDB storage on its own database (embedded: SQLite beside the app database)."""
    import optuna
    from sqlalchemy import event

    url = url or (settings or get_settings()).optuna_url()
    _make_sqlite_folder(url)
    try:
        # a server's connections may have been closed while idle: test each on checkout (not SQLite's)
        kwargs = {} if url.startswith("sqlite") else {"pool_pre_ping": True}
        storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as e:
        raise SearchError(
            f"Optuna storage {url.split('@')[-1]} cannot be used: {str(e).splitlines()[0]}"
        ) from None
    if url.startswith("sqlite"):
        # every ask, tell and user attribute is its own commit: with SQLite's default rollback journal
        # and full syncs they cost more than merging a soup; WAL with normal syncs halves them
        event.listen(storage.engine, "connect", _sqlite_wal)
        storage.engine.dispose()
    return storage


def upgrade_optuna_storage(settings: Settings | None = None, *, url: str | None = None) -> OptunaUpgrade:
    """Create Optuna's tables, or migrate them to this Optuna's version, with Optuna itself.

    Run it before anything reads the database: optuna-dashboard opens a storage without creating
    tables, and processes creating them at the same time can collide. A DatabaseError names the
    database when it cannot be reached or prepared.
    """
    import optuna
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.engine import make_url

    url = url or (settings or get_settings()).optuna_url()
    database = make_url(url).render_as_string(hide_password=True)
    _make_sqlite_folder(url)
    try:
        probe = create_engine(url)
        try:
            existed = inspect(probe).has_table("studies")
        finally:
            probe.dispose()
        storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True)  # creates missing tables
        try:
            before, head = storage.get_current_version(), storage.get_head_version()
            if before != head:
                storage.upgrade()
        finally:
            storage.engine.dispose()
    except Exception as e:  # SQLAlchemy's and Optuna's own errors alike: one line naming the database
        cause = getattr(e, "orig", None) or e  # the driver's own message, without SQLAlchemy's prefix
        first = next((ln.strip() for ln in str(cause).splitlines() if ln.strip()), type(e).__name__)
        raise DatabaseError(f"Optuna database {database} cannot be prepared ({first})") from None
    return OptunaUpgrade(database=database, before=before, head=head, created=not existed)


def _make_sqlite_folder(url: str) -> None:
    """SQLite creates a missing database file, but not the folder it sits in (the path as SQLite reads
    it: no `~` expansion)."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_wal(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
