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
    similarity: Annotated[
        bool,
        typer.Option(
            "--similarity",
            help="basin check: weight and task-vector cosines per layer group, and a warning (exit code 1) "
            "for candidates unlikely to average well",
        ),
    ] = False,
    base: Annotated[
        Path | None, typer.Option(help="with --similarity: the base model, for task vectors against it")
    ] = None,
    groups: Annotated[int, typer.Option(help="with --similarity: depth buckets of the blocks", min=1)] = 4,
    similarity_json: Annotated[
        Path | None,
        typer.Option("--similarity-json", help="with --similarity: write its result as JSON here"),
    ] = None,
) -> None:
    """Architecture, size, dtype and content hash of each checkpoint, and whether they can be merged.

    With --similarity, also whether they share a pretrained base (the basin check).
    """
    from soce.checkpoints import CODE_TO_NAME, Checkpoint, check_compatibility, checkpoint_hash, scan_finite
    from soce.errors import RecipeError

    if (base is not None or similarity_json is not None) and not similarity:
        raise RecipeError("--base and --similarity-json go with --similarity")
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
    result = None
    if similarity and report.ok:
        from soce.merging.similarity import checkpoint_similarity

        result = checkpoint_similarity(paths, base=base, groups=groups, allow_pickle=allow_pickle)
        if similarity_json is not None:
            similarity_json.write_text(result.model_dump_json(indent=2) + "\n")
    if as_json:
        data: dict[str, Any] = {"checkpoints": rows, "compatibility": verdict}
        if result is not None:
            data["similarity"] = result.model_dump(mode="json")
        typer.echo(json.dumps(data, indent=2))
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
        if result is not None:
            _print_similarity(result)
    flagged = result is not None and not result.ok
    if not report.ok or flagged or (scan and any(r["non_finite_tensors"] for r in rows)):
        raise typer.Exit(1)


def _cell(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _pairs(matrix: list[list[float | None]]) -> list[float]:
    n = len(matrix)
    return [v for i in range(n) for j in range(i + 1, n) if (v := matrix[i][j]) is not None]


def _print_similarity(result: Any) -> None:
    """The basin check as tables: per layer group, then the overall weight cosines, then the verdict."""
    n = len(result.candidates)
    against = f"the base {result.base}" if result.base else "the candidates' mean"
    typer.secho(f"\nbasin check: {n} checkpoints, task vectors against {against}", bold=True)
    for i, path in enumerate(result.candidates, start=1):
        typer.echo(f"  #{i} {path}")
    head = f"  {'group':12s} {'params':>12s}  {'weight cos min/mean':>20s}  {'task-vector cos min/mean':>25s}"
    if result.base:
        head += f"  {'to base min':>11s}  {'distance max':>12s}"
    typer.echo(head)
    for g in [*result.groups, result.overall]:
        w, t = _pairs(g.weights), _pairs(g.task_vectors)
        line = (
            f"  {g.group:12s} {g.parameters:>12,d}  "
            f"{_cell(min(w, default=None)) + ' / ' + _cell(sum(w) / len(w) if w else None):>20s}  "
            f"{_cell(min(t, default=None)) + ' / ' + _cell(sum(t) / len(t) if t else None):>25s}"
        )
        if result.base:
            to_base = [v for v in g.base_cosine or [] if v is not None]
            dist = [v for v in g.relative_distance if v is not None]
            line += f"  {_cell(min(to_base, default=None)):>11s}  {_cell(max(dist, default=None)):>12s}"
        typer.echo(line)
    typer.echo("  weight cosine overall (each tensor centred on its mean):")
    typer.echo("       " + "".join(f"{'#' + str(j):>7s}" for j in range(1, n + 1)))
    for i, row in enumerate(result.overall.weights, start=1):
        typer.echo(f"  {'#' + str(i):>5s}" + "".join(f"{_cell(v):>7s}" for v in row))
    if result.ok:
        typer.secho(
            f"basin check passed: the {n} checkpoints look like fine-tunes of one pretrained base",
            fg=typer.colors.GREEN,
        )
    else:
        typer.secho("basin check warnings:", fg=typer.colors.RED)
        for w in result.warnings:
            typer.echo(f"  {w}")


@friendly
def average(
    checkpoints: Annotated[
        list[Path],
        typer.Argument(
            help="checkpoints of one training run, ordered by trainer_state.json's global_step, else by the "
            "number in their names (checkpoint-500), else as given",
            metavar="CKPT",
        ),
    ],
    out: Annotated[Path, typer.Argument(help="output model folder", metavar="OUT")],
    last: Annotated[
        int | None, typer.Option("--last", help="uniform average of the last K checkpoints (SWA-style)")
    ] = None,
    ema: Annotated[
        float | None,
        typer.Option(
            "--ema", help="EMA with this decay over the checkpoints: ema = decay*ema + (1-decay)*theta_t"
        ),
    ] = None,
    suite: Annotated[
        Path | None,
        typer.Option(help="choose among last 1/2/4/all and EMA decays (and --last/--ema) by dev score on it"),
    ] = None,
    evaluator: Annotated[
        str | None, typer.Option(help="with --suite: the evaluator scoring each average (lm_eval)")
    ] = None,
    force: Annotated[bool, typer.Option(help="replace OUT if it exists")] = False,
    dtype: Annotated[str | None, typer.Option(help="output dtype: float32, bfloat16 or float16")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Average the checkpoints of one run (last K, or an EMA) into a model folder OUT, like `soce merge`.

    With --suite, every setting's average is scored on dev in one resident model and the best is written.
    """
    from soce.errors import OutputExistsError, RecipeError
    from soce.merging.averaging import AveragingSetting, order_by_step, search_settings, write_average
    from soce.merging.recipes import dtype_name

    given = [AveragingSetting.last(last)] if last is not None else []
    given += [AveragingSetting.ema(ema)] if ema is not None else []
    if suite is None and len(given) != 1:
        raise RecipeError("choose one of --last K or --ema DECAY, or --suite SUITE to choose on dev")
    if suite is None and evaluator is not None:
        raise RecipeError("--evaluator goes with --suite")
    out_dtype = dtype_name(dtype, "--dtype: ") if dtype else None
    order = order_by_step(checkpoints)
    n = len(order.checkpoints)
    for s in given:
        s.weights(n)  # a bad K or decay fails before anything is read
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists; choose another folder or pass --force to replace it")
    typer.echo(f"{n} checkpoints, ordered {order.describe()}")
    table: list = []
    if suite is None:
        chosen = given[0]
    else:
        from evaluators import build_evaluator, evaluator_class
        from soce.merging.averaging import ResidentRun, choose_setting
        from soce.schemas.suite import SuiteSpec

        spec = SuiteSpec.from_file(suite)
        name = evaluator or "lm_eval"
        if not callable(getattr(evaluator_class(name), "evaluate_model", None)):
            raise RecipeError(
                f"evaluator {name!r} cannot score an in-memory model; "
                "choose settings with --evaluator lm_eval"
            )
        settings = search_settings(n, given)
        run = ResidentRun(order, build_evaluator(name), spec)
        chosen, table = choose_setting(order, settings, run)
        cats = [c.name for c in spec.categories]
        typer.echo(f"  {'setting':12s} {'dev average':>11s}" + "".join(f" {c[:12]:>12s}" for c in cats))
        for s, scores in table:
            mark = "  <- chosen" if s == chosen else ""
            typer.echo(
                f"  {s.label:12s} {scores.average:>11.4f}"
                + "".join(f" {scores.categories[c].value:>12.4f}" for c in cats)
                + mark
            )
        typer.echo("(dev scores: they chose the setting, so the chosen one's is optimistic)")
    typer.echo(f"averaging: {chosen.describe(n)}")
    factory, close = progress_bar("averaging", quiet)
    try:
        soup = write_average(order, chosen, out, force=force, dtype=out_dtype, progress=factory, table=table)
    finally:
        close()
    typer.echo(
        f"wrote {soup.path} ({chosen.label}, {len(soup.ingredients)} checkpoints, "
        f"{soup.num_tensors} tensors, {soup.nbytes / 1e6:.1f} MB {soup.dtype}, {soup.seconds:.2f}s)"
    )


def methods() -> None:
    """List the merge methods and what they do."""
    from soce.merging import METHODS

    for name, cls in METHODS.items():
        typer.echo(f"{name:16s} {cls.summary}")


def register(app: typer.Typer) -> None:
    """Add merge, inspect, average and methods to `app`."""
    for command in (merge, inspect, average, methods):
        app.command()(command)
