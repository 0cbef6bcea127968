"""`soce run`, `soce demo` and `soce score`: the SoCE pipeline in-process, and scoring on a suite split."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from soce.cli._common import fail, friendly


def _quiet_libraries() -> None:
    """lm-eval's and Hugging Face's own bars and notes only with -v."""
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
        list[Path], typer.Argument(help="checkpoint folders (with --evaluator external: names in the file)")
    ],
    suite: Annotated[Path, typer.Option(help="suite YAML: categories of lm-eval tasks, dev and test splits")],
    split: Annotated[str, typer.Option(help="dev (to choose anything) or test (held out, to report)")],
    evaluator: Annotated[str, typer.Option(help="lm_eval (run tasks) or external (a file)")] = "lm_eval",
    scores: Annotated[Path | None, typer.Option(help="CSV or JSON scores for --evaluator external")] = None,
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

    from evaluators import TaskEvaluator, build_evaluator
    from soce.schemas.scores import ScoreMatrix
    from soce.score_cache import score_checkpoint

    options: dict[str, Any] = {"scores_file": scores} if evaluator == "external" else {}
    if evaluator == "lm_eval":
        options = {"batch_size": batch_size, "device": device, "show_progress": not quiet and verbose}
    backend = build_evaluator(evaluator, **options)
    total = len(checkpoints) * len(spec.tasks)
    desc = f"scoring {spec.split_name(split)}"
    bar = tqdm(total=total, unit="task", desc=desc, disable=quiet, file=sys.stderr)
    results = []
    try:
        for ckpt in checkpoints:
            bar.set_postfix_str(ckpt.name or str(ckpt))
            if isinstance(backend, TaskEvaluator):
                got = score_checkpoint(backend, ckpt, spec, split, progress=bar.update, use_cache=cache)
            else:
                got = backend.score(ckpt, spec, split, progress=bar.update)
            results.append(got)
    finally:
        bar.close()
    matrix = ScoreMatrix.from_scores(results)
    names = [Path(c).name or c for c in matrix.candidates]
    labels = names if len(set(names)) == len(names) else matrix.candidates
    width = max(len(s) for s in [*labels, "candidate"])
    typer.echo(f"{'candidate':{width}s}  " + "  ".join(f"{c:>10s}" for c in [*matrix.categories, "average"]))
    for label, row, avg, res in zip(labels, matrix.values, matrix.average, results, strict=True):
        hit = f"  ({res.cached_tasks}/{len(res.tasks)} cached)" if res.cached_tasks else ""
        typer.echo(f"{label:{width}s}  " + "  ".join(f"{v:10.4f}" for v in [*row, avg]) + hit)
    if isinstance(backend, TaskEvaluator):
        typer.echo(f"{sum(r.cached_tasks for r in results)} of {total} task scores came from the score cache")
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{spec.name}-{split}"
    stem.with_suffix(".json").write_text(matrix.model_dump_json(indent=2) + "\n")
    stem.with_suffix(".csv").write_text(matrix.to_csv())
    typer.echo(f"wrote {stem}.json and {stem}.csv")


def register(app: typer.Typer) -> None:
    """Add run, demo and score to `app`."""
    for command in (run, demo, score):
        app.command()(command)
