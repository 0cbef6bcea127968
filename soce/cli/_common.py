"""What the command modules share: our errors as one line on stderr, progress bars, the database option."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from soce.errors import SoceError

F = TypeVar("F", bound=Callable[..., Any])

DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="SQLAlchemy URL; default: SOCE_DATABASE_URL, or the embedded SQLite"),
]


def fail(message: str) -> None:
    """Print `message` as an error on stderr and exit with code 2."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def friendly(fn: F) -> F:
    """Turn our errors into one clear line on stderr and exit code 2; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SoceError as e:
            fail(str(e))
        except KeyboardInterrupt:
            typer.secho("interrupted; nothing was written", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def progress_bar(
    desc: str, quiet: bool, unit: str = "B"
) -> tuple[Callable[[int], Callable[[int], None]], Callable[[], None]]:
    """A factory of tqdm bars on stderr (given a total, it returns the bar's update) and a function
    closing every bar it made."""
    from tqdm import tqdm

    bars = []

    def factory(total: int) -> Callable[[int], None]:
        bar = tqdm(total=total, unit=unit, unit_scale=unit == "B", desc=desc, disable=quiet, file=sys.stderr)
        bars.append(bar)
        return bar.update

    def close() -> None:
        for b in bars:
            b.close()

    return factory, close


def settings_url() -> str:
    """The app database's URL from the settings (SOCE_DATABASE_URL, or the embedded SQLite)."""
    from soce.config import get_settings

    return get_settings().app_database_url()


def reachable(action: Callable[[], Any], engine: Any) -> Any:
    """Run `action`, turning a connection failure into one line that names the database."""
    from sqlalchemy.exc import SQLAlchemyError

    from soce.db.engine import describe
    from soce.errors import DatabaseError

    try:
        return action()
    except SQLAlchemyError as e:
        cause = getattr(e, "orig", None) or e  # the driver's own message, without SQLAlchemy's prefix
        first = next((ln.strip() for ln in str(cause).splitlines() if ln.strip()), type(e).__name__)
        raise DatabaseError(f"database {describe(engine)} cannot be reached ({first})") from None


def migrated_engine(database_url: str | None) -> Any:
    """The app engine, with its tables there (the api_keys table stands for them; the embedded SQLite
    migrates itself)."""
    from sqlalchemy import inspect

    from soce.db import get_engine
    from soce.db.engine import describe
    from soce.errors import DatabaseError

    engine = get_engine(database_url)
    if not reachable(lambda: inspect(engine).has_table("api_keys"), engine):
        raise DatabaseError(f"database {describe(engine)} has no api_keys table; run `soce db upgrade` first")
    return engine
