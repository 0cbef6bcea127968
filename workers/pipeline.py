"""The SoCE pipeline as plain functions: score, analyse, search, baselines, select, finalize.

`soce run` and `soce demo` call them in-process on embedded defaults; the service wraps the same
steps in Celery tasks. Decisions use the dev split only; the test split is scored to report.
Dev is split per task by a hash of each example (`selection_fraction`): everything up to the weight
search and the greedy soup reads the search part; the final model (a soup, or the best single
candidate) is chosen on the selection part, which none of those choices saw.
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
from functools import partial
from pathlib import Path
from typing import Any

from optimizer.bootstrap import Interval, paired_bootstrap
from optimizer.correlation import Correlation, analyse_correlation
from optimizer.experts import Experts, best_single, choose_experts, ingredient_pool
from optimizer.greedy import GreedySoup, greedy_soup
from optimizer.search import SearchConfig, SearchResult, TrialRecord, WeightSearch
from optimizer.selection import Contender, Selection, select_final
from optimizer.space import SearchSpace, SoupWeights
from soce.checkpoints import Checkpoint, check_compatibility, checkpoint_hash, ensure_compatible
from soce.config import Settings, get_settings
from soce.errors import EvaluationError, SearchError, SoceError
from soce.schemas.run import RunRecipe
from soce.schemas.scores import ScoreMatrix, SuiteScores, TaskScore
from soce.schemas.suite import DevPart, Split, SuiteSpec, canonical_hash
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
def dev_parts(recipe: RunRecipe) -> tuple[DevPart | None, DevPart | None]:
    """The search and selection parts of dev; (None, None) when no part is kept out of the search."""
    f = recipe.selection_fraction
    if f <= 0:
        return None, None
    return DevPart(name="search", fraction=f), DevPart(name="select", fraction=f)


def score_step(
    inputs: RunInputs,
    split: Split,
    *,
    engine: Any = None,
    stages: Stages | None = None,
    part: DevPart | None = None,
) -> ScoreMatrix:
    """Every candidate on `split` (on `part` of dev, if given), from the score cache where it can."""
    from soce.score_cache import score_checkpoint

    stages = stages or Stages(quiet=True)
    results = []
    desc = f"score {split}" + (f" {part.name}" if part else "")
    with stages.stage(desc, total=len(inputs.paths) * len(inputs.suite.tasks), unit="task") as advance:
        for label, path in inputs.paths.items():
            got = score_checkpoint(
                inputs.evaluator, path, inputs.suite, split, engine=engine, progress=advance, part=part
            )
            results.append(got.model_copy(update={"candidate": label}))
    return ScoreMatrix.from_scores(results)


@dataclass(frozen=True)
class Matrices:
    """The candidates' scores: all of dev and test (reported), and the parts of dev that choose."""

    dev: ScoreMatrix
    test: ScoreMatrix
    search: ScoreMatrix  # the search part of dev; all of dev when no part is kept out
    select: ScoreMatrix | None  # the selection part; None when the choice reuses the search's examples

    def as_dict(self) -> dict[str, Any]:
        out = {
            "dev": self.dev.model_dump(mode="json", exclude={"scores"}),
            "test": self.test.model_dump(mode="json", exclude={"scores"}),
        }
        if self.select is not None:
            out["search"] = self.search.model_dump(mode="json", exclude={"scores"})
            out["select"] = self.select.model_dump(mode="json", exclude={"scores"})
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Matrices:
        dev = ScoreMatrix.model_validate(data["dev"])
        search = ScoreMatrix.model_validate(data["search"]) if "search" in data else dev
        select = ScoreMatrix.model_validate(data["select"]) if "select" in data else None
        return cls(dev, ScoreMatrix.model_validate(data["test"]), search, select)

    @property
    def all(self) -> list[ScoreMatrix]:
        return [self.dev, self.test] + ([self.search, self.select] if self.select is not None else [])


def score_all(inputs: RunInputs, *, engine: Any = None, stages: Stages | None = None) -> Matrices:
    """Every candidate on dev, test and the two parts of dev (each through the score cache)."""
    dev = score_step(inputs, "dev", engine=engine, stages=stages)
    test = score_step(inputs, "test", engine=engine, stages=stages)
    search_part, select_part = dev_parts(inputs.recipe)
    if search_part is None or select_part is None:
        return Matrices(dev, test, dev, None)
    search = score_step(inputs, "dev", engine=engine, stages=stages, part=search_part)
    select = score_step(inputs, "dev", engine=engine, stages=stages, part=select_part)
    return Matrices(dev, test, search, select)


# --- analyse -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Analysis:
    correlation: Correlation
    experts: Experts  # the ingredients: category experts, and the best single candidate by default
    best_single: str  # by dev average on all of dev


def analyse_step(dev: ScoreMatrix, recipe: RunRecipe, *, whole: ScoreMatrix | None = None) -> Analysis:
    """Correlations between categories on `dev` (the search part), the weakly correlated ones, their
    experts and the ingredient pool.

    whole: all of dev (default `dev`), where the best single candidate is chosen: as a user would
    choose their best checkpoint, on every dev example. Its score on the selection part is then a
    little optimistic, which only makes a soup harder to choose.
    """
    whole = whole or dev
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
    pool = ingredient_pool(
        experts, whole.candidates, whole.average, include_best_single=recipe.include_best_single
    )
    return Analysis(corr, pool, best_single(whole.candidates, whole.average))


# --- search --------------------------------------------------------------------------------------
def study_name(inputs: RunInputs, experts: Sequence[str], space: SearchSpace) -> str:
    """A study per (expert contents, dev tasks, evaluator, space, sampler, seed): a rerun continues it."""
    hashes = []
    for e in experts:
        with Checkpoint.open(inputs.paths[e]) as ckpt:
            hashes.append(checkpoint_hash(ckpt))
    r = inputs.recipe
    search_part, _ = dev_parts(r)
    kwargs = {"part": search_part} if search_part is not None else {}
    key = {
        "experts": hashes,
        "tasks": [
            inputs.evaluator.task_fingerprint(inputs.suite, t, "dev", **kwargs) for t in inputs.suite.tasks
        ],
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
    """The study of this search over the ingredients' weights on the search part of dev (created, or
    continued if stored)."""
    r = inputs.recipe
    search_part, _ = dev_parts(r)
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
        partial(resident, part=search_part),
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
    """Optuna over the ingredients' weights on the search part of dev, trials in this process (up to
    `parallel_trials` threads)."""
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


def dev_average(
    resident: ResidentSoup, weights: SoupWeights, suite: SuiteSpec, part: DevPart | None = None
) -> float:
    """The soup's dev average (on `part` of dev, if given)."""
    tasks, _ = resident.score_tasks(weights, "dev", part=part)
    return SuiteScores.aggregate(suite, "dev", candidate="soup", evaluator="soup", tasks=tasks).average


def baselines_step(
    inputs: RunInputs,
    dev: ScoreMatrix,
    analysis: Analysis,
    resident: ResidentSoup,
    *,
    stages: Stages | None = None,
) -> dict[str, Baseline]:
    """Best single, uniform soups of all candidates and of the ingredients, greedy soup: built and
    scored on `dev`, the search part of dev (`dev_average` of each baseline is on that part)."""
    stages = stages or Stages(quiet=True)
    suite = inputs.suite
    search_part, _ = dev_parts(inputs.recipe)
    avg = dict(zip(dev.candidates, dev.average, strict=True))
    best = analysis.best_single
    experts = analysis.experts.candidates
    out = {"best_single": Baseline("best_single", f"best single ({best})", resident.single(best), avg[best])}
    with stages.stage("baselines", total=len(dev.candidates) + 1, unit="soup") as advance:
        all_w = resident.uniform(dev.candidates)
        out["uniform"] = Baseline(
            "uniform", "uniform soup (all)", all_w, dev_average(resident, all_w, suite, search_part)
        )
        advance(1)
        exp_w = resident.uniform(experts)
        out["uniform_experts"] = Baseline(
            "uniform_experts",
            "uniform soup (ingredients)",
            exp_w,
            dev_average(resident, exp_w, suite, search_part),
        )
        advance(1)

        def soup_of(members: Sequence[str]) -> float:
            value = dev_average(resident, resident.uniform(members), suite, search_part)
            advance(1)
            return value

        g = greedy_soup(avg, soup_of, strict=inputs.recipe.greedy_strict)
        out["greedy"] = Baseline("greedy", "greedy soup", resident.uniform(g.members), g.objective, g)
    return out


# --- select --------------------------------------------------------------------------------------
SIMPLICITY = {"best_single": 0, "uniform": 1, "uniform_experts": 1, "greedy": 2}  # trials: 3


@dataclass
class Selected:
    """The final choice: each contender's weights and averages, and the decision (optimizer.selection)."""

    selection: Selection
    weights: dict[str, SoupWeights]  # contender name -> its weights
    labels: dict[str, str]
    search_average: dict[str, float | None]  # on the search part (what the search and greedy saw)
    fraction: float  # of dev examples in the selection part (0: the choice reused the search part)
    trials: dict[str, int]  # contender name -> trial number

    @property
    def soup_name(self) -> str | None:
        """The soup to write: the chosen one, else the best soup on the selection part."""
        return self.selection.chosen if self.selection.kind == "soup" else self.selection.best_soup


def top_trials(search: SearchResult, count: int) -> list[TrialRecord]:
    """The best `count` finished trials with distinct weights, best first (ties: the earlier trial)."""
    done = [
        t
        for t in search.history
        if t.state == "COMPLETE" and t.objective is not None and t.weights is not None
    ]
    done.sort(key=lambda t: (-(t.objective or 0.0), t.number))
    out, seen = [], set()
    for t in done:
        key = t.weights.key()  # type: ignore[union-attr]
        if key not in seen:
            seen.add(key)
            out.append(t)
        if len(out) == count:
            break
    return out


def suite_structure(suite: SuiteSpec) -> list[tuple[float, list[tuple[str, float]]]]:
    return [(c.weight, [(t.name, t.weight) for t in c.tasks]) for c in suite.categories]


def select_step(
    inputs: RunInputs,
    analysis: Analysis,
    search: SearchResult,
    baselines: Mapping[str, Baseline],
    resident: ResidentSoup,
    *,
    stages: Stages | None = None,
) -> Selected:
    """Score the contenders on the selection part of dev and choose the final model there.

    Contenders: the best single candidate, the best `selection_trials` trials, the greedy soup and
    the uniform soups (a contender whose weights another simpler one already has is dropped).
    """
    stages = stages or Stages(quiet=True)
    r = inputs.recipe
    _, select_part = dev_parts(r)
    weights: dict[str, SoupWeights] = {}
    labels: dict[str, str] = {}
    search_avg: dict[str, float | None] = {}
    trials: dict[str, int] = {}
    seen: dict[tuple, str] = {}

    def add(name: str, label: str, w: SoupWeights, avg: float | None) -> None:
        nonzero = tuple((e, round(x, 12)) for e, x in zip(w.experts, w.weights, strict=True) if x > 0)
        key = (nonzero, tuple(sorted((g, tuple(v)) for g, v in (w.groups or {}).items())))
        if key in seen:
            log.info("contender %s has the weights of %s; compared once", name, seen[key])
            return
        seen[key] = name
        weights[name], labels[name], search_avg[name] = w, label, avg

    for name in ("best_single", "uniform", "uniform_experts", "greedy"):
        if name in baselines:
            b = baselines[name]
            add(name, b.label, b.weights, b.dev_average)
    for t in top_trials(search, r.selection_trials):
        name = f"trial_{t.number}"
        if t.weights is not None:
            add(name, f"trial {t.number}", t.weights, t.objective)
            if name in weights:
                trials[name] = t.number
    contenders = []
    with stages.stage("select", total=len(weights), unit="model") as advance:
        for name, w in weights.items():
            tasks, _ = resident.score_tasks(w, "dev", samples=True, part=select_part)
            samples = {}
            for task in inputs.suite.tasks:
                values = tasks[task.name].samples
                if values is None:
                    raise EvaluationError(
                        f"task {task.name!r}: the evaluator gave no per-example scores for the selection"
                    )
                samples[task.name] = values
            kind = "single" if name == "best_single" else "soup"
            contenders.append(Contender(name, labels[name], kind, SIMPLICITY.get(name, 3), samples))
            advance(1)
    selection = select_final(
        contenders,
        suite_structure(inputs.suite),
        level=r.confidence,
        iterations=r.bootstrap_iterations,
        seed=r.seed,
    )
    return Selected(selection, weights, labels, search_avg, r.selection_fraction, trials)


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


def verdict_line(decision: Mapping[str, Any]) -> str:
    """The one line that opens every output: use the soup (and by how much on test), or keep one candidate."""
    if decision["kind"] == "soup":
        iv = decision["vs_best_single"]
        return (
            f"use the soup: {100 * iv['diff']:+.1f} [{100 * iv['low']:+.1f}, {100 * iv['high']:+.1f}] "
            f"over {decision['best_single']} on test"
        )
    where = "the selection split" if decision.get("selection_fraction") else "dev (no selection split)"
    return f"keep {decision['name']}: no soup beat it on {where}"


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
) -> RunResult:
    """Write the soup, score the contenders and baselines on test, intervals, and the report.

    The soup written is the chosen one, or (when the best single candidate is kept) the best soup on
    the selection part, for inspection: its model card says it is not recommended.
    extra_baselines: name -> model folder (a schedule's champion soup) scored on test beside the soup,
    with a paired interval; one that is missing or cannot be scored is reported, never fatal.
    """
    from optimizer.report_html import render_report_html
    from soce.merging import write_soup

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
    total = len(names) + len(extra_baselines) + 1
    with stages.stage("test", total=total, unit="model") as advance:
        scored: dict[str, Evaluated] = {}
        for name in names:
            w = baselines[name].weights if name in baselines else selected.weights[name]
            scored[name] = test_scores(resident, w, suite, name)
            advance(1)
        soup_test = scored[soup_name]
        base_test = {name: scored[name] for name in baselines}
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
        best = analysis.best_single
        recommended = sel.kind == "soup"
        decision: dict[str, Any] = {
            "kind": sel.kind,
            "name": r.name if recommended else best,
            "source": selected.labels[sel.chosen],
            "model": str(out / "soup") if recommended else str(inputs.paths[best]),
            "test_average": scored[sel.chosen].scores.average,
            "vs_best_single": (
                ci["vs_best_single"].as_dict()
                if recommended
                else {"diff": 0.0, "low": 0.0, "high": 0.0, "level": level, "iterations": its}
            ),
            "best_single": best,
            "reason": sel.reason,
            "selection_fraction": selected.fraction,
        }
        verdict = verdict_line(decision)
        select_result = sel.result(soup_name)
        soup_scores = {
            "dev average (search part)": selected.search_average.get(soup_name) or float("nan"),
            "selection part average": select_result.average,
            "test": {**soup_test.categories, "average": soup_test.scores.average},
        }
        card_verdict = verdict if recommended else f"{verdict}; this soup is written for inspection only"
        soup_dir = out / "soup"
        recipe = merge_recipe(inputs.paths, weights, groups=r.layer_groups, name=r.name, dtype=r.dtype)
        soup = write_soup(
            recipe, soup_dir, force=True, scores=soup_scores, verdict=(recommended, card_verdict)
        )
        # the written folder, loaded from disk, must score what the resident soup scored
        from_disk = inputs.evaluator.score_tasks(soup_dir, suite, "test", suite.tasks)
        disk_avg = SuiteScores.aggregate(
            suite, "test", candidate="soup", evaluator="x", tasks=from_disk
        ).average
        advance(1)
    warnings = [*analysis.correlation.warnings, *analysis.experts.warnings]
    if not selected.fraction:
        warnings.append(
            "selection_fraction is 0: the final model was chosen on the examples the search maximised, "
            "which favours the soup (the winner's curse); keep a selection part to choose fairly"
        )
    warnings += [f"extra baseline {e.name} ({e.path}) was not scored: {e.error}" for e in extras if e.error]
    if abs(disk_avg - soup_test.scores.average) > 1e-6:
        warnings.append(
            f"the written soup scores {disk_avg:.4f} on test from disk, the resident one "
            f"{soup_test.scores.average:.4f} (dtype {soup.dtype})"
        )
    dev_s, dev_avg = _matrix_dict(matrices.dev)
    test_s, test_avg = _matrix_dict(matrices.test)
    parts: dict[str, Any] = {}
    if matrices.select is not None:
        search_s, search_a = _matrix_dict(matrices.search)
        select_s, select_a = _matrix_dict(matrices.select)
        parts = {
            "search_scores": search_s,
            "search_average": search_a,
            "select_scores": select_s,
            "select_average": select_a,
        }
    report: dict[str, Any] = {
        "verdict": verdict,
        "decision": decision,
        "name": r.name,
        "suite": suite.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "soce_version": _version(),
        "recipe": r.model_dump(),
        "candidates": matrices.dev.candidates,
        "candidate_paths": {k: str(v) for k, v in inputs.paths.items()},
        "categories": matrices.dev.categories,
        "dev_scores": dev_s,
        "dev_average": dev_avg,
        "dev_parts": parts,
        "test_scores": test_s,
        "test_average": test_avg,
        "correlation": analysis.correlation.as_dict(),
        "experts": [c.as_dict() for c in analysis.experts.choices],
        "expert_candidates": list(analysis.experts.candidates),
        "experts_fallback": analysis.experts.fallback,
        "best_single": best,
        **weights.as_dict(),
        "search": {
            "study": search.study_name,
            "sampler": search.sampler,
            "space": search.space,
            "n_trials": search.n_trials,
            "evaluations": search.evaluations,
            "best_dev_objective": search.best.objective,
            "best_trial": search.best.number,
            "history": search.history_dicts(),
        },
        "selection": {
            **sel.as_dict(),
            "fraction": selected.fraction,
            "contenders": [
                {
                    **res.as_dict(),
                    "search_average": selected.search_average.get(res.name),
                    "test_average": scored[res.name].scores.average,
                    "trial": selected.trials.get(res.name),
                    **selected.weights[res.name].as_dict(),
                }
                for res in sel.results
            ],
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
            "source": soup_name,
            "label": selected.labels[soup_name],
            "recommended": recommended,
            "method": soup.method,
            "dtype": soup.dtype,
            "dev_average": selected.search_average.get(soup_name),
            "selection_average": select_result.average,
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
    _write_atomic(out / "scores-dev.csv", matrices.dev.to_csv())
    _write_atomic(out / "scores-test.csv", matrices.test.to_csv())
    if matrices.select is not None:
        _write_atomic(out / "scores-dev-search.csv", matrices.search.to_csv())
        _write_atomic(out / "scores-dev-select.csv", matrices.select.to_csv())
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
    matrices = score_all(inputs, engine=engine, stages=stages)
    seconds["score"] = time.perf_counter() - t0
    t = time.perf_counter()
    analysis = analyse_step(matrices.search, recipe, whole=matrices.dev)
    for w in [*analysis.correlation.warnings, *analysis.experts.warnings]:
        stages.note(f"warning: {w}")
    stages.note(
        f"ingredients: {', '.join(analysis.experts.candidates)}"
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
    baselines = baselines_step(inputs, matrices.search, analysis, resident, stages=stages)
    seconds["baselines"] = time.perf_counter() - t
    t = time.perf_counter()
    selected = select_step(inputs, analysis, search, baselines, resident, stages=stages)
    seconds["select"] = time.perf_counter() - t
    t = time.perf_counter()
    result = finalize_step(
        inputs, matrices, analysis, search, baselines, selected, resident, stages=stages, seconds=seconds
    )
    seconds["finalize"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    result.seconds = seconds
    return result
