"""The SoCE pipeline's stages as plain functions: score, analyse, the search's study, baselines.

The job steps (workers.steps, workers.trials) call them, for the service's Celery tasks and for
`soce run` alike; selection is in workers.selecting, the soup and the report in workers.finalize.
Decisions use the dev split only; the test split is scored to report. Dev is split per task by a hash
of each example (`selection_fraction`): everything up to the weight search and the greedy soup reads
the search part; the final model is chosen on the selection part, which none of those choices saw.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from optimizer.correlation import Correlation, analyse_correlation
from optimizer.experts import Experts, best_single, choose_experts, ingredient_pool
from optimizer.greedy import GreedySoup, greedy_soup
from optimizer.learned import LEARNED_OBJECTIVE, LearnedPath, LearnedSettings
from optimizer.samplers import SearchConfig
from optimizer.search import WeightSearch
from optimizer.space import SearchSpace, SoupWeights
from soce.checkpoints import Checkpoint, checkpoint_hash, ensure_compatible
from soce.config import Settings, get_settings
from soce.db.optuna_storage import optuna_storage
from soce.schemas.report import AnalysisResult, CorrelationResult, ExpertChoice
from soce.schemas.run import RunRecipe
from soce.schemas.scores import ScoreMatrix, SuiteScores
from soce.schemas.suite import DevPart, Split, SuiteSpec, canonical_hash
from workers.progress import Stages
from workers.resident import ResidentSoup

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


def ensure_soupable(paths: Iterable[Path]) -> None:
    """Refuse candidates that cannot be souped together; the error names the folder and the problem."""
    with ExitStack() as stack:
        ensure_compatible([stack.enter_context(Checkpoint.open(p)) for p in paths])


def open_run(recipe: RunRecipe, *, settings: Settings | None = None) -> RunInputs:
    """Resolve the candidates, check they can be souped, load the suite, build the evaluator."""
    from evaluators import apply_offline_environment, build_evaluator

    settings = settings or get_settings()
    paths = candidate_labels(recipe.candidate_paths())
    ensure_soupable(paths.values())
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

    def result(self) -> AnalysisResult:
        """The analyse step's result as the job and the report store it."""
        return AnalysisResult(
            correlation=CorrelationResult.model_validate(self.correlation.as_dict()),
            experts=[ExpertChoice.model_validate(c.as_dict()) for c in self.experts.choices],
            expert_candidates=list(self.experts.candidates),
            experts_fallback=self.experts.fallback,
            best_single=self.best_single,
            warnings=[*self.correlation.warnings, *self.experts.warnings],
        )


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
    if r.sampler == "learned":  # its settings choose its points (other samplers' names stay as they were)
        key["learned"] = [r.learned_steps, r.learned_lr, LEARNED_OBJECTIVE]
    return f"soce-{r.sampler}-{canonical_hash(key)[:16]}"


def search_space(inputs: RunInputs, experts: Sequence[str], resident: ResidentSoup) -> SearchSpace:
    groups = resident.layer_groups() if inputs.recipe.space == "layerwise" else ()
    return SearchSpace(tuple(experts), inputs.recipe.space, groups)


def weight_search(
    inputs: RunInputs,
    analysis: Analysis,
    resident: ResidentSoup,
    *,
    storage: Any = None,
    buffered: bool = False,
) -> WeightSearch:
    """The study of this search over the ingredients' weights on the search part of dev (created, or
    continued if stored); `buffered` when this process alone drives it (see WeightSearch.begin)."""
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
        learned=LearnedSettings(steps=r.learned_steps, lr=r.learned_lr),
    )
    learn = None
    if r.sampler == "learned":  # run where the search begins, once per study (see WeightSearch.learned_path)
        learn = partial(_learned_path, resident, config.learned, search_part)
    return WeightSearch(
        space,
        inputs.suite.category_names,
        partial(resident, part=search_part),
        config,
        storage=storage or optuna_storage(),
        study_name=study_name(inputs, experts, space),
        buffered=buffered,
        learn=learn,
    )


def _learned_path(
    resident: ResidentSoup, settings: LearnedSettings, part: DevPart | None, space: SearchSpace
) -> LearnedPath:
    """The learned soup's gradient path on the search part of dev (the part the trials maximise)."""
    return resident.learned_path(space, settings, part=part)


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
    resident: ResidentSoup,
    weights: SoupWeights,
    suite: SuiteSpec,
    part: DevPart | None = None,
    *,
    engine: Any = None,
) -> float:
    """The soup's dev average (on `part` of dev, if given), through the score cache."""
    tasks = resident.cached_scores(weights, "dev", part=part, engine=engine)
    return SuiteScores.aggregate(suite, "dev", candidate="soup", evaluator="soup", tasks=tasks).average


def baselines_step(
    inputs: RunInputs,
    dev: ScoreMatrix,
    analysis: Analysis,
    resident: ResidentSoup,
    *,
    stages: Stages | None = None,
    engine: Any = None,
) -> dict[str, Baseline]:
    """Best single, uniform soups of all candidates and of the ingredients, greedy soup: built and
    scored on `dev`, the search part of dev (`dev_average` of each baseline is on that part; soups'
    scores through the score cache of `engine`, the app database)."""
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
            "uniform",
            "uniform soup (all)",
            all_w,
            dev_average(resident, all_w, suite, search_part, engine=engine),
        )
        advance(1)
        exp_w = resident.uniform(experts)
        out["uniform_experts"] = Baseline(
            "uniform_experts",
            "uniform soup (ingredients)",
            exp_w,
            dev_average(resident, exp_w, suite, search_part, engine=engine),
        )
        advance(1)

        def soup_of(members: Sequence[str]) -> float:
            value = dev_average(resident, resident.uniform(members), suite, search_part, engine=engine)
            advance(1)
            return value

        g = greedy_soup(avg, soup_of, strict=inputs.recipe.greedy_strict)
        out["greedy"] = Baseline("greedy", "greedy soup", resident.uniform(g.members), g.objective, g)
    return out
