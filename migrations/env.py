"""Alembic environment: our metadata, our version table; a connection may be handed in by the caller."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, engine_from_config, pool

from soce.db.migrate import VERSION_TABLE
from soce.db.models import Base

config = context.config
OPTIONS = {
    "target_metadata": Base.metadata,
    "version_table": config.get_main_option("version_table", VERSION_TABLE),
    "render_as_batch": True,  # SQLite alters tables by copying them
    "compare_type": True,
}


def _run(connection: Connection) -> None:
    context.configure(connection=connection, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = engine_from_config(
        config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    with engine.begin() as conn:
        _run(conn)


if context.is_offline_mode():
    run_offline()
else:
    run_online()
