"""`soce apikey create|list|revoke`: API keys for the service's write endpoints (soce.db.apikeys)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from soce.cli._common import DatabaseUrl, friendly, migrated_engine

apikey_app = typer.Typer(help="API keys for the service's write endpoints.", no_args_is_help=True)


@apikey_app.command("create")
@friendly
def apikey_create(
    name: Annotated[str, typer.Option("--name", help="a unique name: who or what uses the key")],
    read_only: Annotated[bool, typer.Option("--read-only", help="the key may read but not write")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Create an API key: prints it once on stdout; only its hash is stored."""
    from soce.db import create_api_key, session_scope

    with session_scope(migrated_engine(database_url)) as session:
        row, key = create_api_key(session=session, name=name, read_only=read_only)
        prefix = row.prefix
    typer.echo(f"created API key {name!r} ({prefix}…); it is shown only now:", err=True)
    typer.echo(key)


@apikey_app.command("list")
@friendly
def apikey_list(database_url: DatabaseUrl = None) -> None:
    """List API keys by name and prefix (the keys themselves are not stored)."""
    from soce.db import list_api_keys, session_scope

    with session_scope(migrated_engine(database_url)) as session:
        rows = list_api_keys(session=session)
    if not rows:
        typer.echo("no API keys; create one with `soce apikey create --name NAME`")
        return
    width = max(len("name"), *(len(r.name) for r in rows))
    header = ["prefix".ljust(14), "access".ljust(10), "created".ljust(16), "last used".ljust(16), "revoked"]
    typer.echo(f"{'name':{width}s}  " + "  ".join(header))
    for r in rows:
        access = "read" if r.read_only else "read-write"
        typer.echo(
            f"{r.name:{width}s}  {r.prefix + '…':14s}  {access:10s}  {_when(r.created_at):16s}  "
            f"{_when(r.last_used_at):16s}  {_when(r.revoked_at)}"
        )


@apikey_app.command("revoke")
@friendly
def apikey_revoke(
    name: Annotated[str, typer.Argument(help="the key's name")],
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke an API key: requests with it are refused from now on."""
    from soce.db import revoke_api_key, session_scope

    with session_scope(migrated_engine(database_url)) as session:
        row = revoke_api_key(session=session, name=name)
        revoked_at = row.revoked_at
    typer.echo(f"revoked API key {name!r} ({revoked_at:%Y-%m-%d %H:%M} UTC)")


def _when(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M") if t else "-"


def register(app: typer.Typer) -> None:
    """Add the `apikey` group to `app`."""
    app.add_typer(apikey_app, name="apikey")
