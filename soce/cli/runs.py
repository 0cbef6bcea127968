"""`soce run`, `soce demo` and `soce score`: the SoCE pipeline in-process, and scoring on a suite split."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from soce.cli._common import fail, friendly
from soce.cli.analysis import ColumnOption, ColumnsOption, ModelColumnOption, ScoresOption, external_options


def _quiet_libraries() -> None:
    """lm-eval's and Hugging Face's own bars and notes only with -v.

    TQDM_DISABLE quiets the bars lm-eval draws while it builds requests (no switch of its own); tqdm
    reads it on import and applies it only to bars that pass no `disable`, so ours (workers.progress)
    pass one and stay.
    """
    import os

    if logging.getLogger().level > logging.INFO:
        for var in ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
            os.environ[var] = "1"
        for name in ("lm_eval", "datasets", "transformers", "optuna"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _print_result(result: Any) -> None:
    """The verdict and test table of a finished run, then where its soup and report are."""
    from workers.summary import result_table

    typer.echo("")
    typer.echo(result_table(result.report))
    typer.echo("")
    typer.echo(f"soup:   {result.soup_path}")
    typer.echo(f"report: {result.report_html}  (and {result.report_json.name})")


@friendly
def run(
    recipe: Annotated[Path, typer.Argument(help="run recipe YAML: candidates, suite, sampler, output")],
    n_trials: Annotated[int | None, typer.Option(help="override the recipe's n_trials")] = None,
    output: Annotated[Path | None, typer.Option(help="override the recipe's output folder")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Run the whole SoCE pipeline locally: score, correlations, experts, weight search, soup, report."""
    from soce.schemas.run import RunRecipe

    spec = RunRecipe.from_file(recipe)
    update: dict[str, Any] = {}
    if n_trials is not None:
        update["n_trials"] = n_trials
    if output is not None:
        update["output"] = str(output.expanduser().resolve())
    if update:
        spec = RunRecipe.parse({**spec.model_dump(), **update}, where=f"{recipe}: ")
    _quiet_libraries()
    from workers.local import run_local
    from workers.progress import Stages

    _print_result(run_local(spec, stages=Stages(quiet=quiet)))


@friendly
def demo(
    size: Annotated[str, typer.Option(help="demo (a few minutes) or tiny (under a minute)")] = "demo",
    out: Annotated[Path, typer.Option(help="folder for the soup and its report")] = Path("soce-demo"),
    pool: Annotated[
        str, typer.Option(help="default, or gentle: a pool where souping does not help (the verdict says so)")
    ] = "default",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Build (or reuse) the reference zoo and run the whole SoCE pipeline on it; prints the verdict and
    the test table."""
    from soce.zoo.build import POOLS, SIZES

    if size not in SIZES:
        fail(f"--size must be one of {', '.join(SIZES)}, not {size!r}")
    if pool not in POOLS:
        fail(f"--pool must be one of {', '.join(POOLS)}, not {pool!r}")
    _quiet_libraries()
    from workers.demo import run_demo

    _print_result(run_demo(size, out, quiet=quiet, pool=pool))


@friendly
def score(
    checkpoints: Annotated[
        list[Path] | None,
        typer.Argument(help="checkpoint folders (with --evaluator external: names in the files)"),
    ] = None,
    suite: Annotated[
        Path, typer.Option(help="suite YAML: categories of lm-eval tasks, dev and test splits")
    ] = ...,  # required: a default only because the optional CHECKPOINTS come first
    split: Annotated[str, typer.Option(help="dev (to choose anything) or test (held out, to report)")] = ...,
    evaluator: Annotated[str, typer.Option(help="lm_eval (run tasks) or external (files)")] = "lm_eval",
    scores: ScoresOption = None,
    columns: ColumnsOption = None,
    column: ColumnOption = None,
    model_column: ModelColumnOption = None,
    all_candidates: Annotated[
        bool,
        typer.Option("--all", help="with --evaluator external: every candidate scored in every category"),
    ] = False,
    out: Annotated[Path, typer.Option(help="folder for the score matrix as JSON and CSV")] = Path("scores"),
    batch_size: Annotated[int | None, typer.Option(help="lm-eval batch size [SOCE_EVAL_BATCH_SIZE]")] = None,
    device: Annotated[str | None, typer.Option(help="torch device, e.g. cuda:0 [default: cuda]")] = None,
    cache: Annotated[bool, typer.Option(help="reuse scores stored for the same checkpoint content")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Score checkpoints on a suite split: prints the candidates x categories matrix, writes JSON and CSV."""
    import os

    from soce.errors import SuiteError
    from soce.schemas.suite import SuiteSpec

    if split not in ("dev", "test"):
        raise SuiteError(f"--split must be dev or test, not {split!r}")
    spec = SuiteSpec.from_file(suite)
    verbose = logging.getLogger().level <= logging.INFO
    if not verbose:  # lm-eval's own bars and notes only with -v
        for var in ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
            os.environ[var] = "1"
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
    from tqdm import tqdm

    from evaluators import ExternalScores, TaskEvaluator, build_evaluator
    from soce.schemas.scores import ScoreMatrix
    from soce.score_cache import score_checkpoint

    if evaluator != "external" and (columns or column or model_column or all_candidates):
        fail("--columns, --column, --model-column and --all are options of --evaluator external")
    options: dict[str, Any] = {}
    if evaluator == "external":
        options = external_options(scores, columns, column, model_column)
    if evaluator == "lm_eval":
        options = {"batch_size": batch_size, "device": device, "show_progress": not quiet and verbose}
    backend = build_evaluator(evaluator, **options)
    candidates: list[str | Path] = list(checkpoints or [])
    if all_candidates and candidates:
        fail("give candidates or --all, not both")
    if all_candidates and isinstance(backend, ExternalScores):
        candidates, skipped = backend.candidates(spec, split)  # type: ignore[assignment]
        for name, why in skipped.items():
            typer.secho(f"skipped {name!r}: {why}", err=True)
    if not candidates:
        fail("name the checkpoints to score (with --evaluator external: candidates in the files, or --all)")
    labels, lengthened = score_labels(candidates)
    candidates = list(labels.values())
    total = len(candidates) * len(spec.tasks)
    desc = f"scoring {spec.split_name(split)}"
    bar = tqdm(total=total, unit="task", desc=desc, disable=quiet, file=sys.stderr)
    results = []
    try:
        for ckpt in candidates:
            bar.set_postfix_str(Path(ckpt).name or str(ckpt))
            if isinstance(backend, TaskEvaluator):
                got = score_checkpoint(backend, Path(ckpt), spec, split, progress=bar.update, use_cache=cache)
            else:
                got = backend.score(ckpt, spec, split, progress=bar.update)
            results.append(got)
    finally:
        bar.close()
    matrix = ScoreMatrix.from_scores(
        [got.model_copy(update={"candidate": label}) for got, label in zip(results, labels, strict=True)]
    )
    width = max(len(s) for s in [*labels, "candidate"])
    heads = [*matrix.categories, "average"]
    cols = [max(10, len(c)) for c in heads]  # BFCL's category names are up to 22 characters
    typer.echo(
        f"{'candidate':{width}s}  " + "  ".join(f"{c:>{w}s}" for c, w in zip(heads, cols, strict=True))
    )
    for label, row, avg, res in zip(labels, matrix.values, matrix.average, results, strict=True):
        hit = f"  ({res.cached_tasks}/{len(res.tasks)} cached)" if res.cached_tasks else ""
        cells = "  ".join(f"{v:{w}.4f}" for v, w in zip([*row, avg], cols, strict=True))
        typer.echo(f"{label:{width}s}  {cells}{hit}")
    if lengthened:
        typer.echo(
            f"note: names lengthened to tell apart folders of one name: {', '.join(lengthened)} "
            "(in the table, the CSV and the JSON)"
        )
    if isinstance(backend, TaskEvaluator):
        typer.echo(f"{sum(r.cached_tasks for r in results)} of {total} task scores came from the score cache")
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{spec.name}-{split}"
    stem.with_suffix(".json").write_text(matrix.model_dump_json(indent=2) + "\n")
    stem.with_suffix(".csv").write_text(matrix.to_csv())
    typer.echo(f"wrote {stem}.json and {stem}.csv")


def score_labels(candidates: Sequence[str | Path]) -> tuple[dict[str, str | Path], list[str]]:
    """Unique names for the score table, CSV and JSON (name -> candidate), and those lengthened.

    A folder is named by its last part, or by as much more of its path as tells it from other folders
    of that name (workers.pipeline.candidate_labels: a/soup, b/soup); a name from a score file (a
    leaderboard's "Org/Model (FC)") as it is. A candidate given twice is scored once.
    """
    from workers.pipeline import candidate_labels

    given: dict[str, str | Path] = {}
    for c in candidates:
        folder = Path(c)
        given.setdefault(str(folder.resolve()) if folder.is_dir() else str(c), c)
    folders = [Path(c) for c in given.values() if Path(c).is_dir()]
    short = {str(p): label for label, p in candidate_labels(folders).items()} if folders else {}
    out: dict[str, str | Path] = {}
    for c in given.values():
        label = short.get(str(Path(c)), str(c))
        out[label if label not in out else str(c)] = c
    lengthened = [label for label, c in out.items() if Path(c).is_dir() and label != Path(c).name]
    return out, lengthened


def register(app: typer.Typer) -> None:
    """Add run, demo and score to `app`."""
    for command in (run, demo, score):
        app.command()(command)
