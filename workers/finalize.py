"""Finalize: the soup written, the contenders and baselines scored on test with paired intervals, and
the typed `Report` (soce.schemas.report) built and written as report.json, report.html and CSV files.

The test split is scored here only, to report: nothing chosen reads it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from optimizer.bootstrap import Interval
from optimizer.records import SearchResult
from soce.errors import SearchError
from soce.schemas import report as rs
from soce.schemas.scores import ScoreMatrix
from soce.score_cache import score_checkpoint
from workers.held_out import (
    ENSEMBLE_LABEL,
    Evaluated,
    ensemble_gain_kept,
    ensemble_test_scores,
    extra_test_scores,
    intervals,
    own_interval,
    soup_ingredients,
    suite_summaries,
    test_scores,
)
from workers.interpolate import report_curve
from workers.pipeline import Analysis, Baseline, Matrices, RunInputs
from workers.progress import Stages
from workers.resident import ResidentSoup, merge_recipe
from workers.selecting import Selected

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    output: Path
    soup_path: Path
    report_json: Path
    report_html: Path
    report: rs.Report
    seconds: dict[str, float] = field(default_factory=dict)


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: readers see the old or the new.

    The file gets the mode any new file gets here (0666 less the umask, as the soup's files), not
    mkstemp's private 0600.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def elapsed(
    seconds: Mapping[str, float] | None, finalize_started: float | None, job_started: datetime | None
) -> dict[str, float]:
    """The report's seconds: the steps' so far, the finalize step's and the whole job's until now."""
    out = dict(seconds or {})
    if finalize_started is not None:
        out["finalize"] = time.perf_counter() - finalize_started
    if job_started is not None:
        out["total"] = (datetime.now(UTC) - job_started).total_seconds()
    return out


def _umask() -> int:
    umask = os.umask(0)  # reading it means setting it: put it back at once (as soce.merging does)
    os.umask(umask)
    return umask


def _matrix(m: ScoreMatrix) -> tuple[rs.Scores, rs.Averages]:
    scores = {
        c: dict(zip(m.categories, row, strict=True)) for c, row in zip(m.candidates, m.values, strict=True)
    }
    return scores, dict(zip(m.candidates, m.average, strict=True))


def _interval(iv: Interval) -> rs.Interval:
    return rs.Interval(diff=iv.diff, low=iv.low, high=iv.high, level=iv.level, iterations=iv.iterations)


def verdict_line(decision: rs.Decision) -> str:
    """The one line that opens every output: use the soup (and by how much on test), or keep one candidate."""
    if decision.kind == "soup":
        iv = decision.vs_best_single
        return (
            f"use the soup: {100 * iv.diff:+.1f} [{100 * iv.low:+.1f}, {100 * iv.high:+.1f}] "
            f"over {decision.best_single} on test"
        )
    where = "the selection split" if decision.selection_fraction else "dev (no selection split)"
    return f"keep {decision.name}: no soup beat it on {where}"


def search_summary(search: SearchResult) -> rs.SearchSummary:
    return rs.SearchSummary(
        study=search.study_name,
        sampler=search.sampler,
        space=search.space,
        n_trials=search.n_trials,
        evaluations=search.evaluations,
        best_dev_objective=search.best.objective,
        best_trial=search.best.number,
        history=[rs.TrialResult.model_validate(h) for h in search.history_dicts()],
    )


def finalize_step(
    inputs: RunInputs,
    matrices: Matrices,
    analysis: Analysis,
    search: SearchResult,
    baselines: Mapping[str, Baseline],
    selected: Selected,
    resident: ResidentSoup,
    *,
    stages: Stages | None = None,
    seconds: Mapping[str, float] | None = None,
    extra_baselines: Mapping[str, Path] | None = None,
    similarity: Mapping[str, Any] | None = None,
    engine: Engine | None = None,
    finalize_started: float | None = None,
    job_started: datetime | None = None,
) -> RunResult:
    """Write the soup, score the contenders and baselines on test, intervals, and the report.

    The soup written is the chosen one, or (when the best single candidate is kept) the best soup on
    the selection part, for inspection: its model card says it is not recommended.
    extra_baselines: name -> model folder (a schedule's champion soup) scored on test beside the soup,
    with a paired interval; one that is missing or cannot be scored is reported, never fatal.
    engine: the app database, whose score cache keeps soups' test scores (soce.score_cache.score_soup).
    The report's seconds add `finalize` (since `finalize_started`, a perf_counter reading) and `total`
    (since `job_started`) to `seconds`.
    """
    from soce.merging import write_soup
    from soce.report import render_report_html

    stages = stages or Stages(quiet=True)
    r, suite = inputs.recipe, inputs.suite
    out = Path(r.output).expanduser().resolve()
    sel = selected.selection
    soup_name = selected.soup_name
    if soup_name is None:
        raise SearchError(f"study {search.study_name}: no soup was compared on the selection part")
    weights = selected.weights[soup_name]
    extra_baselines = dict(extra_baselines or {})
    names = list(dict.fromkeys([*baselines, *selected.weights]))
    ingredients = soup_ingredients(weights)
    runs_ensemble = r.ensemble and len(ingredients) > 1
    total = len(names) + len(extra_baselines) + 1 + int(runs_ensemble)
    with stages.stage("test", total=total, unit="model") as advance:
        scored: dict[str, Evaluated] = {}
        for name in names:
            w = baselines[name].weights if name in baselines else selected.weights[name]
            scored[name] = test_scores(resident, w, suite, name, engine=engine)
            advance(1)
        soup_test = scored[soup_name]
        base_test = {name: scored[name] for name in baselines}
        extras = []
        for name, folder in extra_baselines.items():
            extras.append(extra_test_scores(inputs, name, Path(folder)))
            advance(1)
        ensemble = ensemble_test_scores(resident, ingredients, suite, enabled=r.ensemble, engine=engine)
        if runs_ensemble:
            advance(1)
        level, its = r.confidence, r.bootstrap_iterations
        ci = {
            f"vs_{name}": intervals(
                soup_test, base_test[name], suite, iterations=its, level=level, seed=r.seed
            )
            for name in baselines
        }
        gain_kept, gain_note = None, ensemble.note
        if ensemble.scored is not None:
            ci["vs_ensemble"] = intervals(
                soup_test, ensemble.scored, suite, iterations=its, level=level, seed=r.seed
            )
            gain_kept, gain_note = ensemble_gain_kept(
                soup_test.scores.average,
                base_test["best_single"].scores.average,
                ensemble.scored.scores.average,
            )
            base_test["ensemble"] = ensemble.scored
        for extra in extras:
            if extra.scored is not None:
                ci[f"vs_{extra.name}"] = intervals(
                    soup_test, extra.scored, suite, iterations=its, level=level, seed=r.seed
                )
        own = own_interval(soup_test, suite, iterations=its, level=level, seed=r.seed)
        best = analysis.best_single
        recommended = sel.kind == "soup"
        decision = rs.Decision(
            kind=sel.kind,
            name=r.name if recommended else best,
            source=selected.labels[sel.chosen],
            model=str(out / "soup") if recommended else str(inputs.paths[best]),
            test_average=scored[sel.chosen].scores.average,
            vs_best_single=(
                _interval(ci["vs_best_single"])
                if recommended
                else rs.Interval(diff=0.0, low=0.0, high=0.0, level=level, iterations=its)
            ),
            best_single=best,
            reason=sel.reason,
            selection_fraction=selected.fraction,
        )
        verdict = verdict_line(decision)
        select_result = sel.result(soup_name)
        card_scores = {
            "dev average (search part)": selected.search_average.get(soup_name) or float("nan"),
            "selection part average": select_result.average,
            "test": {**soup_test.categories, "average": soup_test.scores.average},
        }
        card_verdict = verdict if recommended else f"{verdict}; this soup is written for inspection only"
        soup_dir = out / "soup"
        recipe = merge_recipe(inputs.paths, weights, groups=r.layer_groups, name=r.name, dtype=r.dtype)
        soup = write_soup(
            recipe, soup_dir, force=True, scores=card_scores, verdict=(recommended, card_verdict)
        )
        # the written folder, loaded from disk, must score what the resident soup scored (cached by
        # the folder's content, as a candidate's scores are: the same bytes scored the same)
        disk_avg = score_checkpoint(inputs.evaluator, soup_dir, suite, "test", engine=engine).average
        advance(1)
    # the dev curve between the two largest ingredients: points x one dev evaluation, merged in place
    curve, curve_warnings = report_curve(
        resident, weights, points=r.interpolation_points, stages=stages, engine=engine
    )
    warnings = [*analysis.correlation.warnings, *analysis.experts.warnings]
    basins = rs.SimilarityResult.model_validate(similarity) if similarity else None  # the analyse step's
    warnings += basins.warnings if basins else []
    warnings += curve_warnings
    if not selected.fraction:
        warnings.append(
            "selection_fraction is 0: the final model was chosen on the examples the search maximised, "
            "which favours the soup (the winner's curse); keep a selection part to choose fairly"
        )
    warnings += [f"extra baseline {e.name} ({e.path}) was not scored: {e.error}" for e in extras if e.error]
    if runs_ensemble and ensemble.scored is None:
        warnings.append(str(ensemble.note))
    if abs(disk_avg - soup_test.scores.average) > 1e-6:
        warnings.append(
            f"the written soup scores {disk_avg:.4f} on test from disk, the resident one "
            f"{soup_test.scores.average:.4f} (dtype {soup.dtype})"
        )
    dev_s, dev_avg = _matrix(matrices.dev)
    test_s, test_avg = _matrix(matrices.test)
    parts = rs.DevParts()
    if matrices.select is not None:
        search_s, search_a = _matrix(matrices.search)
        select_s, select_a = _matrix(matrices.select)
        parts = rs.DevParts(
            search_scores=search_s, search_average=search_a, select_scores=select_s, select_average=select_a
        )
    result = analysis.result()
    baseline_results = {
        name: rs.BaselineResult(
            label=b.label,
            members=b.members,
            weights=dict(zip(b.weights.experts, b.weights.weights, strict=True)),
            dev_average=b.dev_average,
            test=base_test[name].categories,
            test_average=base_test[name].scores.average,
            steps=[rs.GreedyStep(**s.__dict__) for s in b.greedy.steps] if b.greedy else None,
            evaluations=b.greedy.evaluations if b.greedy else None,
        )
        for name, b in baselines.items()
    }
    if ensemble.scored is not None:
        baseline_results["ensemble"] = rs.BaselineResult(
            label=ENSEMBLE_LABEL,
            kind="ensemble",
            members=ensemble.members,
            weights={m: 1 / len(ensemble.members) for m in ensemble.members},
            dev_average=None,
            test=ensemble.scored.categories,
            test_average=ensemble.scored.scores.average,
        )
    for e in extras:
        if e.scored is not None:
            baseline_results[e.name] = rs.BaselineResult(
                label=e.name,
                kind="extra",
                path=str(e.path),
                members=[],
                weights={},
                dev_average=None,
                test=e.scored.categories,
                test_average=e.scored.scores.average,
            )
    report = rs.Report(
        similarity=basins,
        summaries=suite_summaries(suite, matrices.test, {"soup": soup_test, **base_test}),
        verdict=verdict,
        decision=decision,
        name=r.name,
        suite=suite.name,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        soce_version=_version(),
        recipe=r,
        candidates=matrices.dev.candidates,
        candidate_paths={k: str(v) for k, v in inputs.paths.items()},
        categories=matrices.dev.categories,
        dev_scores=dev_s,
        dev_average=dev_avg,
        dev_parts=parts,
        test_scores=test_s,
        test_average=test_avg,
        correlation=result.correlation,
        experts=result.experts,
        expert_candidates=result.expert_candidates,
        experts_fallback=result.experts_fallback,
        best_single=best,
        **weights.as_dict(),
        search=search_summary(search),
        selection=rs.SelectionResult(
            **{k: v for k, v in sel.as_dict().items() if k != "contenders"},
            fraction=selected.fraction,
            contenders=[
                rs.ContenderResult(
                    **res.as_dict(),
                    search_average=selected.search_average.get(res.name),
                    test_average=scored[res.name].scores.average,
                    trial=selected.trials.get(res.name),
                    **selected.weights[res.name].as_dict(),
                )
                for res in sel.results
            ],
        ),
        baselines=baseline_results,
        baselines_not_scored={
            e.name: rs.NotScored(path=str(e.path), error=e.error) for e in extras if e.error
        },
        soup=rs.SoupResult(
            path=str(soup_dir),
            source=soup_name,
            label=selected.labels[soup_name],
            recommended=recommended,
            method=soup.method,
            dtype=soup.dtype,
            dev_average=selected.search_average.get(soup_name),
            selection_average=select_result.average,
            test=soup_test.categories,
            test_average=soup_test.scores.average,
            test_average_interval=(own.low, own.high),
            test_average_from_disk=disk_avg,
            intervals={k: _interval(v) for k, v in ci.items()},
            ensemble_gain_kept=gain_kept,
            ensemble_note=gain_note,
        ),
        seconds=elapsed(seconds, finalize_started, job_started),
        warnings=warnings,
        interpolation=curve,
    )
    report_json, report_html = out / "report.json", out / "report.html"
    write_atomic(report_json, json.dumps(report.as_json(), indent=2) + "\n")
    write_atomic(report_html, render_report_html(report))
    write_atomic(out / "scores-dev.csv", matrices.dev.to_csv())
    write_atomic(out / "scores-test.csv", matrices.test.to_csv())
    if matrices.select is not None:
        write_atomic(out / "scores-dev-search.csv", matrices.search.to_csv())
        write_atomic(out / "scores-dev-select.csv", matrices.select.to_csv())
    return RunResult(out, soup_dir, report_json, report_html, report, dict(report.seconds))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("soce")
    except PackageNotFoundError:
        return "unknown"
