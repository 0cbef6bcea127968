"""soce interpolate: the score curve along the line between two checkpoints."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
