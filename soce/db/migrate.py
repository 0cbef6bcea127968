"""Alembic, configured in code so it works from an installed package (no alembic.ini needed)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from soce.errors import DatabaseError

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

VERSION_TABLE = "soce_alembic_version"  # Optuna owns `alembic_version` in its own database
HEAD = "0005"  # the newest revision in migrations/versions; a test keeps the two equal


def migrations_folder() -> Path:
    """The top-level `migrations` package's folder, found by name (soce core imports none of ours)."""
    spec = importlib.util.find_spec("migrations")
    if spec is None or not spec.submodule_search_locations:
        raise DatabaseError("the `migrations` package is not installed beside `soce`")
    return Path(next(iter(spec.submodule_search_locations)))


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_folder()))
    cfg.set_main_option("version_table", VERSION_TABLE)
    # '%' is interpolation syntax in Alembic's config parser
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def current_revision(engine: Engine) -> str | None:
    """The schema revision recorded in the database, or None before the first migration."""
    with engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()


def _where(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _run(engine: Engine, action: str, revision: str) -> None:
    from alembic import command
    from alembic.util.exc import CommandError

    cfg = alembic_config(engine)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            getattr(command, action)(cfg, revision)
    except (SQLAlchemyError, CommandError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatabaseError(f"database {_where(engine)}: {action} to {revision} failed ({first})") from e


def upgrade(engine: Engine, revision: str = "head") -> None:
    _run(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    _run(engine, "downgrade", revision)


def ensure_schema(engine: Engine) -> None:
    """Upgrade to head unless the database is already there (checked without importing Alembic)."""
    try:
        current = current_revision(engine)
    except SQLAlchemyError as e:
        raise DatabaseError(f"database {_where(engine)} cannot be read ({type(e).__name__})") from e
    if current != HEAD:
        log.info("migrating %s from %s to %s", _where(engine), current or "empty", HEAD)
        upgrade(engine)
