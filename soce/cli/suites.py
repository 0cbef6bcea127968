"""`soce suite`: benchmark suite presets written as suite files (BFCL)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from soce.cli._common import friendly, progress_bar

suite_app = typer.Typer(help="Benchmark suite presets, written as suite files.", no_args_is_help=True)


@suite_app.command("bfcl")
@friendly
def suite_bfcl(
    out: Annotated[Path, typer.Option("--out", help="the suite file to write (its tasks go beside it)")],
    data: Annotated[
        Path | None,
        typer.Option(help="the bfcl-eval wheel or its unpacked folder; default: a cached download"),
    ] = None,
    category: Annotated[
        list[str] | None,
        typer.Option("--category", "-c", help="a BFCL category to include (repeat); default: all 11"),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="score at most this many items per category (quick runs)")
    ] = None,
    dev_share: Annotated[float, typer.Option(help="share of each category's items in dev")] = 0.5,
    force: Annotated[bool, typer.Option(help="replace OUT and its task folder")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """BFCL's single-turn AST categories as a suite: each BFCL category a SoCE category, items split
    into dev and test by a hash of their id, prompted with the model's chat template as BFCL prompts
    local models, and the leaderboard's summary columns."""
    from evaluators.bfcl import CATEGORIES
    from evaluators.bfcl.suite_files import write_bfcl_suite

    chosen = list(category or CATEGORIES)
    factory, close = progress_bar("categories", quiet, unit="category")
    try:
        path = write_bfcl_suite(
            out,
            data=data,
            categories=chosen,
            limit=limit,
            dev_share=dev_share,
            force=force,
            progress=factory(len(chosen)),
        )
    finally:
        close()
    typer.echo(f"wrote {path} ({len(chosen)} categories; tasks in {path.with_name(path.stem + '_tasks')})")


def register(app: typer.Typer) -> None:
    """Add the `suite` group to `app`."""
    app.add_typer(suite_app, name="suite")
