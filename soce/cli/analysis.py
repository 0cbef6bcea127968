"""soce analyse: correlation and category experts from scores alone (a score file or a leaderboard table).

The paper's procedure up to the weight search, on imported scores: the dev score matrix, the correlation
between categories across candidates, the weakly correlated categories, their experts and the ingredient
pool, computed by the analyse step of `soce run` itself (workers.pipeline.analyse_step). The weight search
merges checkpoints, which scores do not give: the command ends by saying what `soce run` would soup.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from soce.cli._common import fail, friendly

if TYPE_CHECKING:
    from evaluators.external import ExternalScores
    from soce.schemas.scores import ScoreMatrix
    from soce.schemas.suite import SuiteSpec
    from workers.pipeline import Analysis

# the external evaluator's options, shared with `soce score`
ScoresOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--scores",
        help="score files: rows (candidate, category or task, score) or leaderboard tables such as BFCL's "
        "data_overall.csv; repeat to merge several",
    ),
]
ColumnsOption = Annotated[
    Path | None,
    typer.Option(
        "--columns", help="YAML or JSON {leaderboard header: suite category}, beside the built-in BFCL one"
    ),
]
ColumnOption = Annotated[
    list[str] | None,
    typer.Option("--column", help="'HEADER=CATEGORY': read a leaderboard column as a category (repeatable)"),
]
ModelColumnOption = Annotated[
    str | None,
    typer.Option(
        "--model-column", help="read the CSV files as leaderboard tables, candidates in this column [Model]"
    ),
]


def external_options(
    scores: list[Path] | None, columns: Path | None, column: list[str] | None, model_column: str | None
) -> dict[str, Any]:
    """The external evaluator's keyword options from the command line's."""
    from evaluators.leaderboard import user_columns

    return {
        "scores_file": scores or None,
        "columns": user_columns(columns, column or []),
        "model_column": model_column,
    }


def _score_table(matrix: ScoreMatrix) -> list[str]:
    width = max(len(s) for s in [*matrix.candidates, "candidate"])
    heads = [*matrix.categories, "average"]
    cols = [max(len(c), 6) for c in heads]
    lines = [f"{'candidate':{width}s}  " + "  ".join(f"{c:>{w}s}" for c, w in zip(heads, cols, strict=True))]
    for cand, row, avg in zip(matrix.candidates, matrix.values, matrix.average, strict=True):
        cells = "  ".join(f"{v:{w}.4f}" for v, w in zip([*row, avg], cols, strict=True))
        lines.append(f"{cand:{width}s}  {cells}")
    return lines


def _correlation_table(analysis: Analysis) -> list[str]:
    corr = analysis.correlation
    cats = corr.categories
    rule = f"|rho| < {corr.tau:g}" if corr.absolute else f"rho < {corr.tau:g}"
    labels = [f"[{i}] {c}" + (" *" if c in corr.weak else "") for i, c in enumerate(cats, 1)]
    width = max(len(s) for s in labels)
    lines = [
        f"{corr.method} correlation between categories across candidates "
        f"(* weakly correlated: {rule} with another category)",
        " " * width + "".join(f"{f'[{i}]':>7s}" for i in range(1, len(cats) + 1)),
    ]
    for label, row in zip(labels, corr.matrix(), strict=True):
        lines.append(
            f"{label:{width}s}" + "".join(f"{'n/a':>7s}" if v is None else f"{v:+7.2f}" for v in row)
        )
    lines.append(corr.explanation)
    return lines


def _expert_table(analysis: Analysis) -> list[str]:
    choices = [c for c in analysis.experts.choices if c.category is not None]
    if not choices:
        return ["category experts: none (no weakly correlated category has a scored candidate)"]
    rows = [("category", "expert", "score", "runner-up", "score", "margin")]
    for c in choices:
        rows.append(
            (
                str(c.category),
                c.candidate,
                f"{c.score:.4f}" if c.score is not None else "",
                c.runner_up or "",
                f"{c.runner_up_score:.4f}" if c.runner_up_score is not None else "",
                f"{c.margin:+.4f}" if c.margin is not None else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    right = (2, 4, 5)
    return ["category experts (best dev score in each weakly correlated category)"] + [
        "  ".join(
            f"{v:>{w}s}" if i in right else f"{v:{w}s}"
            for i, (v, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()
        for r in rows
    ]


def _ingredients(analysis: Analysis) -> list[str]:
    pool = analysis.experts
    why: dict[str, list[str]] = {c: [] for c in pool.candidates}
    for choice in pool.choices:
        if choice.candidate in why:
            why[choice.candidate].append(choice.reason)
    lines = [f"ingredients ({len(pool.candidates)}): the candidates the weight search would soup"]
    lines += [f"  {c}: {'; '.join(reasons)}" for c, reasons in why.items()]
    return lines


def _next_recipe(
    analysis: Analysis, suite: Path, name: str, settings: dict[str, Any], sources: list[Path]
) -> dict[str, Any]:
    """A `soce run` recipe for the ingredients: each one's checkpoint folder where a candidate is a folder
    (from here or from its score file), else a placeholder where it goes."""

    def folder(candidate: str) -> str:
        found = [p for p in [Path(candidate), *(s.parent / candidate for s in sources)] if p.is_dir()]
        return str(found[0].resolve()) if found else f"<checkpoint folder of {candidate}>"

    return {
        "name": name,
        "candidates": [folder(c) for c in analysis.experts.candidates],
        "suite": str(suite.resolve()),
        **settings,
        "sampler": "grid",
    }


def _next_step(analysis: Analysis, recipe: dict[str, Any]) -> list[str]:
    import yaml

    from optimizer.space import grid_points

    k = len(analysis.experts.candidates)
    text = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True, width=1000)
    return [
        f"next: the weight search merges checkpoints, which scores alone do not give. To soup these {k} "
        "ingredients, write a recipe naming their checkpoint folders (fine-tunes of one base model) and "
        "run `soce run RECIPE.yaml`:",
        *(f"  {line}" for line in text.splitlines()),
        f"  (sampler grid is the paper's search: {len(grid_points(k))} weightings of {k} ingredients, its "
        "0.1 grid and the uniform point.) "
        "soce run scores the checkpoints on the suite itself and repeats this analysis on their dev scores.",
    ]


def _dev_scores(
    backend: ExternalScores, spec: SuiteSpec, models: list[str] | None, top: int | None
) -> tuple[ScoreMatrix, dict[str, str]]:
    """The dev matrix of the named models (default: every model scored in every category), the `top`
    best by average if asked, and the models left out with why."""
    from soce.schemas.scores import ScoreMatrix

    skipped: dict[str, str] = {}
    if not models:
        models, skipped = backend.candidates(spec, "dev")
    elif len(set(models)) < len(models):
        fail(f"candidates named twice: {', '.join(sorted({m for m in models if models.count(m) > 1}))}")
    scores = [backend.score(m, spec, "dev") for m in models]
    if top is not None and top < len(scores):
        ranked = sorted(range(len(scores)), key=lambda i: -scores[i].average)
        for i in ranked[top:]:
            skipped[scores[i].candidate] = f"not among the top {top} by average ({scores[i].average:.4f})"
        scores = [scores[i] for i in sorted(ranked[:top])]
    if len(scores) < 2:
        fail(f"the analysis compares candidates: it needs at least 2, and has {len(scores)}")
    return ScoreMatrix.from_scores(scores), skipped


@friendly
def analyse(
    models: Annotated[
        list[str] | None,
        typer.Argument(
            help="candidates: names in the score files (default: every one scored in every category)"
        ),
    ] = None,
    suite: Annotated[Path, typer.Option(help="suite YAML: its categories are the analysis's")] = ...,
    evaluator: Annotated[
        str, typer.Option(help="external: scores from files (the only one here)")
    ] = "external",
    scores: ScoresOption = None,
    columns: ColumnsOption = None,
    column: ColumnOption = None,
    model_column: ModelColumnOption = None,
    tau: Annotated[
        float, typer.Option(min=-1, max=1, help="a category is weakly correlated when rho < tau with another")
    ] = 0.5,
    correlation: Annotated[str, typer.Option(help="pearson or spearman")] = "pearson",
    absolute: Annotated[bool, typer.Option(help="use |rho| < tau (the paper's formula) instead")] = False,
    top: Annotated[
        int | None, typer.Option(min=2, help="analyse only the N candidates with the best average")
    ] = None,
    max_experts: Annotated[int | None, typer.Option(min=2, help="keep at most N experts")] = None,
    experts_only: Annotated[
        bool, typer.Option(help="the paper's pool: without the best single candidate as an ingredient")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="write the whole result to this file")
    ] = None,
) -> None:
    """The paper's analysis on scores alone: correlations, weakly correlated categories, category experts
    and the ingredients a soup would search over."""
    from evaluators import ExternalScores
    from soce.schemas.run import RunRecipe
    from soce.schemas.suite import SuiteSpec
    from workers.pipeline import analyse_step

    if evaluator != "external":
        fail(
            f"soce analyse reads scores from files (--evaluator external), not {evaluator!r}; soce run "
            "scores checkpoints itself"
        )
    if correlation not in ("pearson", "spearman"):
        fail(f"--correlation must be pearson or spearman, not {correlation!r}")
    spec = SuiteSpec.from_file(suite)
    backend = ExternalScores(**external_options(scores, columns, column, model_column))
    matrix, skipped = _dev_scores(backend, spec, models, top)
    settings: dict[str, Any] = {"correlation": correlation, "tau": tau, "absolute": absolute}
    if max_experts is not None:
        settings["max_experts"] = max_experts
    if experts_only:
        settings["include_best_single"] = False
    recipe = RunRecipe.parse(
        {"name": f"{spec.name}-soup", "candidates": matrix.candidates, "suite": str(suite), **settings},
        where="soce analyse: ",
    )
    analysis = analyse_step(matrix, recipe)
    board = backend.leaderboard(spec)
    next_recipe = _next_recipe(analysis, suite, recipe.name, settings, backend.paths)

    out = [
        f"suite {spec.name}: {len(matrix.candidates)} candidates x {len(matrix.categories)} categories, "
        f"scores from {', '.join(map(str, backend.paths))}"
    ]
    if board is not None:
        out.append("a leaderboard has no dev or test split: its scores are read as dev")
        out += [
            f"  {c} <- " + ", ".join(f"{p.name} {h!r}" for p, h in board.columns[c])
            for c in spec.category_names
            if c in board.columns
        ]
    out += ["", "dev scores", *_score_table(matrix), "", *_correlation_table(analysis), ""]
    out += [*_expert_table(analysis), "", *_ingredients(analysis), ""]
    notes = [*analysis.correlation.warnings, *analysis.experts.warnings]
    left = [f"left out {name!r}: {why}" for name, why in skipped.items()]
    shown = 5  # a whole leaderboard leaves out many models: the rest are in --json
    notes += left[:shown] + ([f"... and {len(left) - shown} more left out"] if len(left) > shown else [])
    out += [f"warning: {n}" for n in notes] + ([""] if notes else [])
    out += _next_step(analysis, next_recipe)
    typer.echo("\n".join(out))
    if json_out is not None:
        result = {
            "suite": spec.name,
            "sources": [str(p) for p in backend.paths],
            "columns": {
                c: [{"file": str(p), "column": h} for p, h in cols]
                for c, cols in (board.columns if board else {}).items()
            },
            "left_out": skipped,
            "scores": matrix.model_dump(mode="json", exclude={"scores"}),
            "analysis": analysis.result().model_dump(mode="json"),
            "next": {"command": "soce run RECIPE.yaml", "recipe": next_recipe},
        }
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        typer.echo(f"wrote {json_out}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.command()(analyse)
