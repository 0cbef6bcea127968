"""soce analyse: correlation and category experts from scores alone (a score file or a leaderboard table)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
