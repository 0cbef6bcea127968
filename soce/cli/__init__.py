"""The `soce` command: the Typer `app`, with one module per command group adding its commands.

Every command imports what it runs inside its body, so `soce --help` loads no heavy library (torch,
transformers, lm_eval, optuna, celery, sqlalchemy).
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from soce.cli import analysis, apikeys, db, explain, models, runs, schedules, service, suites, zoo
from soce.cli.service import WORKER_QUEUES

__all__ = ["WORKER_QUEUES", "app"]

app = typer.Typer(
    name="soce",
    help="SoCE: merge fine-tuned checkpoints of one base model into one better model (model soups).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="more logging")] = 0,
) -> None:
    """Set the log level of every command: warnings, with -v info too, with -vv debug."""
    logging.basicConfig(
        level=logging.WARNING - 10 * min(verbose, 2), format="%(levelname)s %(name)s: %(message)s"
    )


# the order of `soce --help`: commands as registered here, then the groups
for _group in (models, zoo, runs, analysis, explain, suites, db, apikeys, schedules, service):
    _group.register(app)
