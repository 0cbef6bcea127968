"""soce interpolate: the score curve along the line between two checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from soce.cli._common import friendly, progress_bar

if TYPE_CHECKING:
    from soce.schemas.interpolation import InterpolationCurve

PLOT_WIDTH, PLOT_HEIGHT = 51, 9  # characters of the text plot: t in steps of 0.02, 9 rows of scores


@friendly
def interpolate(
    a: Annotated[Path, typer.Argument(help="checkpoint folder A (t=0)")],
    b: Annotated[Path, typer.Argument(help="checkpoint folder B (t=1), a fine-tune of the same base")],
    suite: Annotated[Path, typer.Option(help="suite YAML: categories of lm-eval tasks, dev and test splits")],
    points: Annotated[int, typer.Option(help="evenly spaced t in [0, 1], both ends included (2 to 101)")] = 5,
    evaluator: Annotated[str, typer.Option(help="lm_eval: scores each point in memory")] = "lm_eval",
    split: Annotated[str, typer.Option(help="dev (to choose anything) or test (held out, to report)")] = (
        "dev"
    ),
    out: Annotated[Path, typer.Option(help="the curve as JSON")] = Path("curve.json"),
    plot: Annotated[Path, typer.Option(help="the curve as an SVG chart")] = Path("curve.svg"),
    threshold: Annotated[
        float, typer.Option(help="a barrier above this (and above twice its standard error) is a dip")
    ] = 0.05,
    batch_size: Annotated[int | None, typer.Option(help="lm-eval batch size [SOCE_EVAL_BATCH_SIZE]")] = None,
    device: Annotated[str | None, typer.Option(help="torch device, e.g. cuda:0 [default: cuda]")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Score the models (1-t)*A + t*B between two checkpoints: a table, a text plot, the barrier (how far
    the curve dips below the straight line between its ends) and whether A and B are linearly connected.

    One model is loaded; each point is merged into it in place and scored on the split, without disk.
    """
    from soce.errors import InterpolationError
    from soce.schemas.suite import SuiteSpec

    if split not in ("dev", "test"):
        raise InterpolationError(f"--split must be dev or test, not {split!r}")
    if not 2 <= points <= 101:
        raise InterpolationError(f"--points must be from 2 (the two ends) to 101, not {points}")
    if not 0 <= threshold <= 1:
        raise InterpolationError(f"--threshold is a score difference from 0 to 1, not {threshold}")
    spec = SuiteSpec.from_file(suite)
    if logging.getLogger().level > logging.INFO:  # lm-eval's and datasets' notes only with -v
        import os

        # the libraries' own bars; ours is on or off by --quiet alone (progress_bar passes `disable`)
        for var in ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
            os.environ[var] = "1"
        for name in ("lm_eval", "datasets", "transformers"):
            logging.getLogger(name).setLevel(logging.ERROR)
    from evaluators import apply_offline_environment, build_evaluator, evaluator_class
    from workers.interpolate import interpolate_checkpoints

    if not hasattr(evaluator_class(evaluator), "evaluate_model"):
        raise InterpolationError(
            f"--evaluator {evaluator} reads scores from files and cannot score the models between two "
            "checkpoints; use lm_eval"
        )
    apply_offline_environment()
    backend = build_evaluator(evaluator, batch_size=batch_size, device=device)
    factory, close = progress_bar("interpolating", quiet, unit="point")
    try:
        curve = interpolate_checkpoints(
            a, b, spec, backend, points=points, split=split, threshold=threshold, progress=factory(points)
        )
    finally:
        close()
    for line in [*curve_table(curve), "", *text_plot(curve), ""]:
        typer.echo(line)
    typer.echo(
        f"barrier {curve.barrier:.4f} at t={curve.barrier_t:.2f} "
        f"(the largest gap below the straight line between the ends); dip below the lower end {curve.dip:.4f}"
    )
    typer.secho(curve.conclusion, bold=True)
    _write(out, curve.model_dump_json(indent=2) + "\n")
    _write(plot, curve_svg(curve))
    typer.echo(f"wrote {out} and {plot}")


def curve_table(curve: InterpolationCurve) -> list[str]:
    """The curve as text rows: t, each category, the average."""
    names = [*curve.points[0].categories, "average"]
    widths = [max(len(n), 8) for n in names]
    head = f"{'t':>6s}  " + "  ".join(f"{n:>{w}s}" for n, w in zip(names, widths, strict=True))
    rows = [f"{curve.a_path}  (A, t=0)", f"{curve.b_path}  (B, t=1)", "", head]
    for p in curve.points:
        values = [*p.categories.values(), p.average]
        rows.append(f"{p.t:6.3f}  " + "  ".join(f"{v:{w}.4f}" for v, w in zip(values, widths, strict=True)))
    return rows


def text_plot(curve: InterpolationCurve, width: int = PLOT_WIDTH, height: int = PLOT_HEIGHT) -> list[str]:
    """The average along t as characters: `*` the points, `.` the straight line between the ends."""
    first, last = curve.ends
    chord = [first + (last - first) * x / (width - 1) for x in range(width)]
    averages = [p.average for p in curve.points]
    lo, hi = min([*averages, *chord]), max([*averages, *chord])
    span = (hi - lo) or 1.0

    def row(v: float) -> int:
        return round((hi - v) / span * (height - 1))

    grid = [[" "] * width for _ in range(height)]
    for x, v in enumerate(chord):
        grid[row(v)][x] = "."
    for p in curve.points:
        grid[row(p.average)][round(p.t * (width - 1))] = "*"
    labels = {0: f"{hi:.3f}", height - 1: f"{lo:.3f}"}
    lines = [f"{labels.get(i, ''):>7s} |{''.join(cells).rstrip()}" for i, cells in enumerate(grid)]
    lines.append(f"{'':7s} +{'-' * width}")
    lines.append(f"{'':7s}  {'t=0 (A)':<{width - 7}s}t=1 (B)")
    lines.insert(0, f"{curve.split} average along t (* scored, . straight line between the ends)")
    return lines


def curve_svg(curve: InterpolationCurve) -> str:
    """The curve as a standalone SVG file, drawn as report.html draws it."""
    from soce.report.interpolation_chart import interpolation_svg, standalone_svg

    ts = [p.t for p in curve.points]
    categories = {c: [p.categories.get(c) for p in curve.points] for c in curve.points[0].categories}
    svg = interpolation_svg(
        ts, categories, [p.average for p in curve.points], a=curve.a, b=curve.b, split=curve.split
    )
    return standalone_svg(svg)


def _write(path: Path, text: str) -> None:
    from soce.errors import InterpolationError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        raise InterpolationError(f"{path}: cannot be written ({e.strerror or e})") from None


def register(app: typer.Typer) -> None:
    """Add interpolate to `app`."""
    app.command()(interpolate)
