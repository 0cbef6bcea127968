"""soce suite: benchmark suite presets written as suite files (BFCL)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
