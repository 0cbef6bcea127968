"""The SoCE pipeline as plain functions: score, analyse, search, baselines, finalize.

`soce run` and `soce demo` call them in-process on embedded defaults; the service wraps the same
steps in Celery tasks. Decisions use the dev split only; the test split is scored to report.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from optimizer.bootstrap import Interval, paired_bootstrap
from optimizer.correlation import Correlation, analyse_correlation
from optimizer.experts import Experts, choose_experts
from optimizer.greedy import GreedySoup, greedy_soup
from optimizer.search import SearchConfig, SearchResult, WeightSearch
from optimizer.space import SearchSpace, SoupWeights
from soce.checkpoints import Checkpoint, check_compatibility, checkpoint_hash, ensure_compatible
from soce.config import Settings, get_settings
from soce.errors import EvaluationError, SearchError, SoceError
from soce.schemas.run import RunRecipe
from soce.schemas.scores import ScoreMatrix, SuiteScores, TaskScore
from soce.schemas.suite import Split, SuiteSpec, canonical_hash
from workers.progress import Stages
from workers.resident import ResidentSoup, merge_recipe

log = logging.getLogger(__name__)

BASELINES = {
    "best_single": "best single candidate (by dev average)",
    "uniform": "uniform soup of all candidates",
    "uniform_experts": "uniform soup of the experts",
    "greedy": "greedy soup (Wortsman et al.)",
}


@dataclass(frozen=True)
class RunInputs:
    recipe: RunRecipe
    suite: SuiteSpec
    paths: dict[str, Path]  # label -> candidate folder
    evaluator: Any

    @property
    def labels(self) -> list[str]:
        return list(self.paths)


def candidate_labels(paths: Sequence[Path]) -> dict[str, Path]:
    """Short unique names: the folder name, or more of the path where two folder names are equal."""
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return dict(zip(labels, paths, strict=True))
    return {str(p): p for p in paths}


def open_run(recipe: RunRecipe, *, settings: Settings | None = None) -> RunInputs:
    """Resolve the candidates, check they can be souped, load the suite, build the evaluator."""
    from evaluators import apply_offline_environment, build_evaluator

    settings = settings or get_settings()
    paths = candidate_labels(recipe.candidate_paths())
    ckpts = [Checkpoint.open(p) for p in paths.values()]
    try:
        ensure_compatible(ckpts)
    finally:
        for c in ckpts:
            c.close()
    suite = SuiteSpec.from_file(recipe.suite)
    apply_offline_environment(settings)
    evaluator = build_evaluator(recipe.evaluator, batch_size=recipe.batch_size, settings=settings)
    return RunInputs(recipe, suite, paths, evaluator)


# --- score ---------------------------------------------------------------------------------------
def score_step(
    inputs: RunInputs, split: Split, *, engine: Any = None, stages: Stages | None = None
) -> ScoreMatrix:
    """Every candidate on `split`, from the score cache where it can."""
    from soce.score_cache import score_checkpoint

    stages = stages or Stages(quiet=True)
    results = []
    with stages.stage(
        f"score {split}", total=len(inputs.paths) * len(inputs.suite.tasks), unit="task"
    ) as advance:
        for label, path in inputs.paths.items():
            got = score_checkpoint(
                inputs.evaluator, path, inputs.suite, split, engine=engine, progress=advance
            )
            results.append(got.model_copy(update={"candidate": label}))
    return ScoreMatrix.from_scores(results)


# --- analyse -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Analysis:
    correlation: Correlation
    experts: Experts


def analyse_step(dev: ScoreMatrix, recipe: RunRecipe) -> Analysis:
    """Correlations between categories on dev, the weakly correlated ones, and their experts."""
    corr = analyse_correlation(
        dev.candidates,
        dev.categories,
        dev.values,
        tau=recipe.tau,
        method=recipe.correlation,
        absolute=recipe.absolute,
    )
    experts = choose_experts(
        dev.candidates, dev.categories, dev.values, dev.average, corr.weak, max_experts=recipe.max_experts
    )
    return Analysis(corr, experts)


# --- search --------------------------------------------------------------------------------------
def study_name(inputs: RunInputs, experts: Sequence[str], space: SearchSpace) -> str:
    """A study per (expert contents, dev tasks, evaluator, space, sampler, seed): a rerun continues it."""
    hashes = []
    for e in experts:
        with Checkpoint.open(inputs.paths[e]) as ckpt:
            hashes.append(checkpoint_hash(ckpt))
    r = inputs.recipe
    key = {
        "experts": hashes,
        "tasks": [inputs.evaluator.task_fingerprint(inputs.suite, t, "dev") for t in inputs.suite.tasks],
        "metrics": [t.metric for t in inputs.suite.tasks],
        "weights": [(c.name, c.weight, [t.weight for t in c.tasks]) for c in inputs.suite.categories],
        "evaluator": [inputs.evaluator.name, inputs.evaluator.version],
        "limit": inputs.suite.limit,
        "fewshot": inputs.suite.num_fewshot,
        "space": [space.name, list(space.groups)],
        "sampler": r.sampler,
        "pruning": r.pruning,
        "seed": r.seed,
    }
    return f"soce-{r.sampler}-{canonical_hash(key)[:16]}"


def search_space(inputs: RunInputs, experts: Sequence[str], resident: ResidentSoup) -> SearchSpace:
    groups = resident.layer_groups() if inputs.recipe.space == "layerwise" else ()
    return SearchSpace(tuple(experts), inputs.recipe.space, groups)


def weight_search(
    inputs: RunInputs, analysis: Analysis, resident: ResidentSoup, *, storage: Any = None
) -> WeightSearch:
    """The study of this search over the experts' weights on dev (created, or continued if stored)."""
    r = inputs.recipe
    experts = analysis.experts.candidates
    space = search_space(inputs, experts, resident)
    config = SearchConfig(
        sampler=r.sampler,
        n_trials=r.n_trials,
        seed=r.seed,
        parallel=r.parallel_trials,
        pruning=r.pruning,
        category_weights={c.name: c.weight for c in inputs.suite.categories},
    )
    return WeightSearch(
        space,
        inputs.suite.category_names,
        resident,
        config,
        storage=storage or optuna_storage(),
        study_name=study_name(inputs, experts, space),
    )


def search_step(
    inputs: RunInputs,
    analysis: Analysis,
    resident: ResidentSoup,
    *,
    storage: Any = None,
    stages: Stages | None = None,
    should_stop: Any = None,
) -> SearchResult:
    """Optuna over the experts' weights on dev, trials in this process (up to `parallel_trials` threads)."""
    stages = stages or Stages(quiet=True)
    search = weight_search(inputs, analysis, resident, storage=storage)
    with stages.stage(f"search {inputs.recipe.sampler}", total=search.n_trials, unit="trial") as advance:
        return search.run(progress=advance, should_stop=should_stop)


def optuna_storage(settings: Settings | None = None, *, url: str | None = None) -> Any:
    """Optuna's RDB storage on its own database (embedded: SQLite beside the app database)."""
    import optuna
    from sqlalchemy import event

    settings = settings or get_settings()
    url = url or settings.optuna_url()
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except Exception as e:
        raise SearchError(
            f"Optuna storage {url.split('@')[-1]} cannot be used: {str(e).splitlines()[0]}"
        ) from None
    if url.startswith("sqlite"):
        # every ask, tell and user attribute is its own commit: with SQLite's default rollback journal
        # and full syncs they cost more than merging a soup; WAL with normal syncs halves them
        event.listen(storage.engine, "connect", _sqlite_wal)
        storage.engine.dispose()
    return storage


def _sqlite_wal(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


# --- baselines -----------------------------------------------------------------------------------
@dataclass
class Baseline:
    name: str
    label: str
    weights: SoupWeights
    dev_average: float | None
    greedy: GreedySoup | None = None

    @property
    def members(self) -> list[str]:
        return list(self.weights.experts)


def dev_average(resident: ResidentSoup, weights: SoupWeights, suite: SuiteSpec) -> float:
    tasks, _ = resident.score_tasks(weights, "dev")
    return SuiteScores.aggregate(suite, "dev", candidate="soup", evaluator="soup", tasks=tasks).average


def baselines_step(
    inputs: RunInputs,
    dev: ScoreMatrix,
    analysis: Analysis,
    resident: ResidentSoup,
    *,
    stages: Stages | None = None,
) -> dict[str, Baseline]:
    """Best single (by dev), uniform soups of all candidates and of the experts, greedy soup; dev only."""
    stages = stages or Stages(quiet=True)
    suite = inputs.suite
    avg = dict(zip(dev.candidates, dev.average, strict=True))
    best = max(dev.candidates, key=lambda c: (avg[c], -dev.candidates.index(c)))
    experts = analysis.experts.candidates
    out = {"best_single": Baseline("best_single", f"best single ({best})", resident.single(best), avg[best])}
    with stages.stage("baselines", total=len(dev.candidates) + 1, unit="soup") as advance:
        all_w = resident.uniform(dev.candidates)
        out["uniform"] = Baseline("uniform", "uniform soup (all)", all_w, dev_average(resident, all_w, suite))
        advance(1)
        exp_w = resident.uniform(experts)
        out["uniform_experts"] = Baseline(
            "uniform_experts", "uniform soup (experts)", exp_w, dev_average(resident, exp_w, suite)
        )
        advance(1)

        def soup_of(members: Sequence[str]) -> float:
            value = dev_average(resident, resident.uniform(members), suite)
            advance(1)
            return value

        g = greedy_soup(avg, soup_of, strict=inputs.recipe.greedy_strict)
        out["greedy"] = Baseline("greedy", "greedy soup", resident.uniform(g.members), g.objective, g)
    return out


# --- finalize ------------------------------------------------------------------------------------
@dataclass
class Evaluated:
    tasks: dict[str, TaskScore]
    scores: SuiteScores

    @property
    def categories(self) -> dict[str, float]:
        return {c: s.value for c, s in self.scores.categories.items()}


def test_scores(resident: ResidentSoup, weights: SoupWeights, suite: SuiteSpec, label: str) -> Evaluated:
    tasks, _ = resident.score_tasks(weights, "test", samples=True)
    return Evaluated(
        tasks, SuiteScores.aggregate(suite, "test", candidate=label, evaluator="soup", tasks=tasks)
    )


def intervals(
    a: Evaluated, b: Evaluated, suite: SuiteSpec, *, iterations: int, level: float, seed: int
) -> Interval:
    structure = [(c.weight, [(t.name, t.weight) for t in c.tasks]) for c in suite.categories]
    for ev in (a, b):
        for t in suite.tasks:
            if ev.tasks[t.name].samples is None:
                raise EvaluationError(
                    f"task {t.name!r}: the evaluator gave no per-example scores for the interval"
                )
    return paired_bootstrap(
        {t: s.samples for t, s in a.tasks.items()},  # type: ignore[misc]
        {t: s.samples for t, s in b.tasks.items()},  # type: ignore[misc]
        structure,
        iterations=iterations,
        level=level,
        seed=seed,
    )


def own_interval(ev: Evaluated, suite: SuiteSpec, *, iterations: int, level: float, seed: int) -> Interval:
    """Bootstrap interval of one model's test average (its per-example scores against zeros, paired)."""
    zeros = Evaluated(
        {
            name: s.model_copy(update={"samples": [0.0] * len(s.samples or [])})
            for name, s in ev.tasks.items()
        },
        ev.scores,
    )
    return intervals(ev, zeros, suite, iterations=iterations, level=level, seed=seed)


@dataclass
class ExtraBaseline:
    """A model folder scored on test beside the soup (a schedule's champion): its scores, or why not."""

    name: str
    path: Path
    scored: Evaluated | None = None
    error: str | None = None


def extra_test_scores(inputs: RunInputs, name: str, folder: Path) -> ExtraBaseline:
    """Score `folder` on test with per-example scores, as baselines are; a problem is returned, not raised.

    The folder must be a checkpoint of the candidates' architecture (dtype may differ: a soup may be
    stored in another one). It is loaded on its own, scored, and released.
    """
    import gc

    folder = Path(folder).expanduser()
    try:
        if not folder.is_dir():
            raise EvaluationError(f"{folder}: no such folder")
        first = next(iter(inputs.paths.values()))
        with Checkpoint.open(first) as candidate, Checkpoint.open(folder) as ckpt:
            report = check_compatibility([candidate, ckpt], same_dtype=False)
        if not report.ok:
            raise EvaluationError(
                f"{folder}: not the candidates' architecture ("
                + "; ".join(p.message for p in report.problems[:3])
                + ")"
            )
        model, tokenizer = inputs.evaluator.load_checkpoint(folder)
        try:
            tasks = inputs.evaluator.evaluate_model(model, tokenizer, inputs.suite, "test", samples=True)
        finally:
            del model
            gc.collect()
            _release_accelerator_memory()
    except SoceError as e:
        log.warning("extra baseline %s (%s) not scored: %s", name, folder, e)
        return ExtraBaseline(name, folder, error=str(e))
    except Exception as e:  # a broken folder must not fail the run that reports on it
        log.exception("extra baseline %s (%s) not scored", name, folder)
        return ExtraBaseline(name, folder, error=f"{type(e).__name__}: {e}")
    scores = SuiteScores.aggregate(inputs.suite, "test", candidate=name, evaluator="extra", tasks=tasks)
    return ExtraBaseline(name, folder, scored=Evaluated(tasks, scores))


def _release_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class RunResult:
    output: Path
    soup_path: Path
    report_json: Path
    report_html: Path
    report: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _matrix_dict(m: ScoreMatrix) -> tuple[dict, dict]:
    scores = {
        c: dict(zip(m.categories, row, strict=True)) for c, row in zip(m.candidates, m.values, strict=True)
    }
    return scores, dict(zip(m.candidates, m.average, strict=True))


def finalize_step(
    inputs: RunInputs,
    dev: ScoreMatrix,
    test: ScoreMatrix,
    analysis: Analysis,
    search: SearchResult,
    baselines: Mapping[str, Baseline],
    resident: ResidentSoup,
    *,
    stages: Stages | None = None,
    seconds: Mapping[str, float] | None = None,
    extra_baselines: Mapping[str, Path] | None = None,
) -> RunResult:
    """Write the soup, score it and every baseline on test, intervals, and report.json / report.html.

    extra_baselines: name -> model folder (a schedule's champion soup) scored on test beside the soup,
    with a paired interval; one that is missing or cannot be scored is reported, never fatal.
    """
    from optimizer.report_html import render_report_html
    from soce.merging import write_soup

    stages = stages or Stages(quiet=True)
    r, suite = inputs.recipe, inputs.suite
    out = Path(r.output).expanduser().resolve()
    best = search.best
    if best.weights is None:
        raise SearchError(f"study {search.study_name}: the best trial has no weights")
    weights = best.weights
    extra_baselines = dict(extra_baselines or {})
    total = len(baselines) + len(extra_baselines) + 2
    with stages.stage("test", total=total, unit="model") as advance:
        soup_test = test_scores(resident, weights, suite, "soce")
        advance(1)
        base_test = {}
        for name, b in baselines.items():
            base_test[name] = test_scores(resident, b.weights, suite, name)
            advance(1)
        extras = []
        for name, folder in extra_baselines.items():
            extras.append(extra_test_scores(inputs, name, Path(folder)))
            advance(1)
        level, its = r.confidence, r.bootstrap_iterations
        ci = {
            f"vs_{name}": intervals(
                soup_test, base_test[name], suite, iterations=its, level=level, seed=r.seed
            )
            for name in baselines
        }
        for extra in extras:
            if extra.scored is not None:
                ci[f"vs_{extra.name}"] = intervals(
                    soup_test, extra.scored, suite, iterations=its, level=level, seed=r.seed
                )
        own = own_interval(soup_test, suite, iterations=its, level=level, seed=r.seed)
        soup_scores = {
            "dev average": best.objective,
            "test": {**soup_test.categories, "average": soup_test.scores.average},
        }
        soup_dir = out / "soup"
        recipe = merge_recipe(inputs.paths, weights, groups=r.layer_groups, name=r.name, dtype=r.dtype)
        soup = write_soup(recipe, soup_dir, force=True, scores=soup_scores)
        # the written folder, loaded from disk, must score what the resident soup scored
        from_disk = inputs.evaluator.score_tasks(soup_dir, suite, "test", suite.tasks)
        disk_avg = SuiteScores.aggregate(
            suite, "test", candidate="soup", evaluator="x", tasks=from_disk
        ).average
        advance(1)
    warnings = [*analysis.correlation.warnings, *analysis.experts.warnings]
    warnings += [f"extra baseline {e.name} ({e.path}) was not scored: {e.error}" for e in extras if e.error]
    if abs(disk_avg - soup_test.scores.average) > 1e-6:
        warnings.append(
            f"the written soup scores {disk_avg:.4f} on test from disk, the resident one "
            f"{soup_test.scores.average:.4f} (dtype {soup.dtype})"
        )
    dev_s, dev_avg = _matrix_dict(dev)
    test_s, test_avg = _matrix_dict(test)
    report: dict[str, Any] = {
        "name": r.name,
        "suite": suite.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "soce_version": _version(),
        "recipe": r.model_dump(),
        "candidates": dev.candidates,
        "candidate_paths": {k: str(v) for k, v in inputs.paths.items()},
        "categories": dev.categories,
        "dev_scores": dev_s,
        "dev_average": dev_avg,
        "test_scores": test_s,
        "test_average": test_avg,
        "correlation": analysis.correlation.as_dict(),
        "experts": [c.as_dict() for c in analysis.experts.choices],
        "expert_candidates": list(analysis.experts.candidates),
        "experts_fallback": analysis.experts.fallback,
        **weights.as_dict(),
        "search": {
            "study": search.study_name,
            "sampler": search.sampler,
            "space": search.space,
            "n_trials": search.n_trials,
            "evaluations": search.evaluations,
            "best_dev_objective": best.objective,
            "best_trial": best.number,
            "history": search.history_dicts(),
        },
        "baselines": {
            name: {
                "label": b.label,
                "members": b.members,
                "weights": dict(zip(b.weights.experts, b.weights.weights, strict=True)),
                "dev_average": b.dev_average,
                "test": base_test[name].categories,
                "test_average": base_test[name].scores.average,
                **(
                    {"steps": [s.__dict__ for s in b.greedy.steps], "evaluations": b.greedy.evaluations}
                    if b.greedy
                    else {}
                ),
            }
            for name, b in baselines.items()
        }
        | {
            e.name: {
                "label": e.name,
                "path": str(e.path),
                "members": [],
                "weights": {},
                "dev_average": None,
                "test": e.scored.categories,
                "test_average": e.scored.scores.average,
            }
            for e in extras
            if e.scored is not None
        },
        "baselines_not_scored": {e.name: {"path": str(e.path), "error": e.error} for e in extras if e.error},
        "soup": {
            "path": str(soup_dir),
            "method": soup.method,
            "dtype": soup.dtype,
            "dev_average": best.objective,
            "test": soup_test.categories,
            "test_average": soup_test.scores.average,
            "test_average_interval": [own.low, own.high],
            "test_average_from_disk": disk_avg,
            "intervals": {k: v.as_dict() for k, v in ci.items()},
        },
        "seconds": dict(seconds or {}),
        "warnings": warnings,
    }
    report_json, report_html = out / "report.json", out / "report.html"
    _write_atomic(report_json, json.dumps(report, indent=2, default=str) + "\n")
    _write_atomic(report_html, render_report_html(report))
    _write_atomic(out / "scores-dev.csv", dev.to_csv())
    _write_atomic(out / "scores-test.csv", test.to_csv())
    return RunResult(out, soup_dir, report_json, report_html, report, dict(seconds or {}))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("soce")
    except PackageNotFoundError:
        return "unknown"


# --- the whole run -------------------------------------------------------------------------------
def run_local(
    recipe: RunRecipe, *, stages: Stages | None = None, engine: Any = None, storage: Any = None
) -> RunResult:
    """The whole pipeline in this process: scores cached in the app database, the study in Optuna's."""
    stages = stages or Stages(quiet=True)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    inputs = open_run(recipe)
    dev = score_step(inputs, "dev", engine=engine, stages=stages)
    test = score_step(inputs, "test", engine=engine, stages=stages)
    seconds["score"] = time.perf_counter() - t0
    t = time.perf_counter()
    analysis = analyse_step(dev, recipe)
    for w in [*analysis.correlation.warnings, *analysis.experts.warnings]:
        stages.note(f"warning: {w}")
    stages.note(
        f"experts: {', '.join(analysis.experts.candidates)}"
        + (
            f" (weakly correlated: {', '.join(analysis.correlation.weak)})"
            if analysis.correlation.weak
            else ""
        )
    )
    resident = ResidentSoup(inputs.paths, inputs.evaluator, inputs.suite, groups=recipe.layer_groups)
    seconds["load"] = time.perf_counter() - t
    t = time.perf_counter()
    search = search_step(inputs, analysis, resident, storage=storage, stages=stages)
    seconds["search"] = time.perf_counter() - t
    t = time.perf_counter()
    baselines = baselines_step(inputs, dev, analysis, resident, stages=stages)
    seconds["baselines"] = time.perf_counter() - t
    t = time.perf_counter()
    result = finalize_step(
        inputs, dev, test, analysis, search, baselines, resident, stages=stages, seconds=seconds
    )
    seconds["finalize"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    result.seconds = seconds
    return result
