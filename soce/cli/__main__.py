"""`python -m soce.cli`: the same as the `soce` command."""

from soce.cli import app

app()
