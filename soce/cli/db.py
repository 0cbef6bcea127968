"""`soce db upgrade` and `soce db current`: the app database's Alembic migrations (and Optuna's tables)."""

from __future__ import annotations

from typing import Annotated

import typer

from soce.cli._common import DatabaseUrl, friendly, reachable, settings_url

db_app = typer.Typer(help="The app database: Alembic migrations of our tables.", no_args_is_help=True)


@db_app.command("upgrade")
@friendly
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
    database_url: DatabaseUrl = None,
    optuna: Annotated[
        bool,
        typer.Option(
            "--optuna", help="also create or upgrade Optuna's own database (OPTUNA_STORAGE_URL) with Optuna"
        ),
    ] = False,
) -> None:
    """Migrate the app database up to REVISION (default: the newest); with --optuna, Optuna's too."""
    from soce.db import create_app_engine
    from soce.db.engine import describe
    from soce.db.migrate import current_revision, upgrade

    engine = create_app_engine(database_url or settings_url())
    try:
        before = reachable(lambda: current_revision(engine), engine)
        upgrade(engine, revision)
        after = current_revision(engine)
    finally:
        engine.dispose()
    change = f"already at {after}" if before == after else f"{before or 'empty'} -> {after}"
    typer.echo(f"database {describe(engine)}: {change}")
    if optuna:
        from soce.db.optuna_storage import upgrade_optuna_storage

        done = upgrade_optuna_storage()
        where = f"Optuna database {done.database}"
        if done.changed:
            typer.echo(f"{where}: {done.before} -> {done.head}")
        else:
            typer.echo(f"{where}: {'created at' if done.created else 'already at'} {done.head}")


@db_app.command("current")
@friendly
def db_current(database_url: DatabaseUrl = None) -> None:
    """Print the app database's schema revision and whether it is the newest."""
    from alembic.script import ScriptDirectory

    from soce.db import create_app_engine
    from soce.db.engine import describe
    from soce.db.migrate import alembic_config, current_revision

    engine = create_app_engine(database_url or settings_url())
    try:
        current = reachable(lambda: current_revision(engine), engine)
        head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    finally:
        engine.dispose()
    where = f"database {describe(engine)}"
    if current is None:
        typer.echo(f"{where}: empty; `soce db upgrade` migrates it to {head}")
    else:
        typer.echo(f"{where}: {current}" + (" (head)" if current == head else f" (head is {head})"))


def register(app: typer.Typer) -> None:
    """Add the `db` group to `app`."""
    app.add_typer(db_app, name="db")
