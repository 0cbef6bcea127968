"""`soce merge`, `soce inspect` and `soce methods`: checkpoints and merge methods, no database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from soce.cli._common import friendly, progress_bar


@friendly
def merge(
    config: Annotated[
        Path,
        typer.Argument(
            help="our recipe YAML, or a mergekit config (linear, task_arithmetic, "
            "ties, dare_linear, dare_ties)"
        ),
    ],
    out: Annotated[Path, typer.Argument(help="output model folder")],
    force: Annotated[bool, typer.Option(help="replace OUT if it exists")] = False,
    dtype: Annotated[str | None, typer.Option(help="output dtype: float32, bfloat16 or float16")] = None,
    shard_size: Annotated[str | None, typer.Option(help="largest output shard, e.g. 5GB or 500MB")] = None,
    allow_pickle: Annotated[
        bool, typer.Option(help="allow pytorch_model.bin (loaded with weights_only=True)")
    ] = False,
    check_finite: Annotated[bool, typer.Option(help="fail if the soup has NaN or Inf values")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Merge the checkpoints of CONFIG into a model folder OUT (streamed, one tensor chunk at a time)."""
    from soce.errors import RecipeError
    from soce.merging import load_recipe, write_soup
    from soce.merging.recipes import dtype_name
    from soce.schemas.merge import parse_size

    recipe = load_recipe(config)
    update: dict[str, Any] = {}
    if dtype:
        update["dtype"] = dtype_name(dtype, "--dtype: ")
    if shard_size:
        try:
            update["shard_size"] = parse_size(shard_size)
        except ValueError as e:
            raise RecipeError(f"--shard-size: {e}") from None
    if allow_pickle:
        update["allow_pickle"] = True
    recipe = recipe.model_copy(update=update)
    factory, close = progress_bar("merging", quiet)
    try:
        soup = write_soup(recipe, out, force=force, progress=factory, check_finite=check_finite)
    finally:
        close()
    typer.echo(
        f"wrote {soup.path} ({soup.method}, {len(soup.ingredients)} candidates, {soup.num_tensors} tensors, "
        f"{soup.nbytes / 1e6:.1f} MB {soup.dtype} in {soup.shards} shard(s), {soup.seconds:.2f}s)"
    )


@friendly
def inspect(
    paths: Annotated[list[Path], typer.Argument(help="model folders or .safetensors files")],
    scan: Annotated[bool, typer.Option(help="also scan every tensor for NaN and Inf")] = False,
    allow_pickle: Annotated[bool, typer.Option(help="allow pytorch_model.bin (weights_only=True)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Architecture, size, dtype and content hash of each checkpoint, and whether they can be merged."""
    from soce.checkpoints import CODE_TO_NAME, Checkpoint, check_compatibility, checkpoint_hash, scan_finite

    ckpts = [Checkpoint.open(p, allow_pickle=allow_pickle) for p in paths]
    rows = []
    for c in ckpts:
        cfg = c.config or {}
        row = {
            "path": str(c.path),
            "architecture": ",".join(cfg.get("architectures") or []) or cfg.get("model_type") or "unknown",
            "layers": cfg.get("num_hidden_layers"),
            "hidden_size": cfg.get("hidden_size"),
            "vocab_size": cfg.get("vocab_size"),
            "tied_embeddings": c.tied_embeddings,
            "parameters": c.num_parameters,
            "dtype": CODE_TO_NAME.get(c.dtype, c.dtype),
            "bytes": c.nbytes,
            "files": len(c.weight_files),
            "format": "pickle" if c.is_pickle else "safetensors",
            "content_hash": checkpoint_hash(c),
        }
        if scan:
            row["non_finite_tensors"] = scan_finite(c)
        rows.append(row)
    report = check_compatibility(ckpts)
    verdict = {
        "compatible": report.ok,
        "problems": [{"kind": p.kind, "message": p.message} for p in report.problems],
    }
    if as_json:
        typer.echo(json.dumps({"checkpoints": rows, "compatibility": verdict}, indent=2))
    else:
        for row in rows:
            typer.secho(row["path"], bold=True)
            typer.echo(
                f"  {row['architecture']}, {row['layers']} layers, hidden {row['hidden_size']}, "
                f"vocab {row['vocab_size']}{', tied embeddings' if row['tied_embeddings'] else ''}\n"
                f"  {row['parameters']:,} parameters, {row['dtype']}, {row['bytes'] / 1e6:.1f} MB in "
                f"{row['files']} {row['format']} file(s)\n  content hash {row['content_hash']}"
            )
            if scan:
                bad = row["non_finite_tensors"]
                typer.echo(f"  NaN/Inf: {', '.join(bad) if bad else 'none'}")
        if len(rows) > 1:
            if report.ok:
                typer.secho(f"compatible: these {len(rows)} checkpoints can be merged", fg=typer.colors.GREEN)
            else:
                typer.secho("not compatible:", fg=typer.colors.RED)
                for p in report.problems:
                    typer.echo(f"  [{p.kind}] {p.message}")
    if not report.ok or (scan and any(r["non_finite_tensors"] for r in rows)):
        raise typer.Exit(1)


def methods() -> None:
    """List the merge methods and what they do."""
    from soce.merging import METHODS

    for name, cls in METHODS.items():
        typer.echo(f"{name:16s} {cls.summary}")


def register(app: typer.Typer) -> None:
    """Add merge, inspect and methods to `app`."""
    for command in (merge, inspect, methods):
        app.command()(command)
