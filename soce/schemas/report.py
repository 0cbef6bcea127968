"""A run's results, typed: each stage's result and the `Report` they make, as report.json holds it.

The workers build each part where it is produced and validate it there; report.json, report.html, the
API's job detail, the dashboard and the soup's model card read the same `Report`. Unknown fields are
refused, so a report that drifts from this schema fails where it is made, not where it is read. Its
JSON Schema is published by the API (`GET /v1/schemas/report`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from soce.schemas.interpolation import InterpolationCurve
from soce.schemas.run import RunRecipe
from soce.schemas.similarity import SimilarityResult

Scores = dict[str, dict[str, float | None]]  # candidate -> category -> score
Averages = dict[str, float | None]  # candidate -> average
Weights = dict[str, float]  # ingredient -> weight
LayerWeights = dict[str, Weights]  # layer group -> ingredient -> weight


class _Result(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Interval(_Result):
    """A paired-bootstrap interval of a difference of test averages (or of one average)."""

    diff: float = Field(description="observed difference of averages, a - b")
    low: float
    high: float
    level: float = Field(description="two-sided confidence level, e.g. 0.95")
    iterations: int


class Decision(_Result):
    """The final model: a soup, or the best single candidate kept."""

    kind: Literal["single", "soup"]
    name: str = Field(description="the run's name when a soup is used, else the candidate kept")
    source: str = Field(description="the contender chosen: best single, a uniform or greedy soup, a trial")
    model: str = Field(description="the folder of the model to use")
    test_average: float
    vs_best_single: Interval = Field(description="the chosen model minus the best single candidate on test")
    best_single: str
    reason: str
    selection_fraction: float


# --- analyse -----------------------------------------------------------------------------------------
class CorrelationResult(_Result):
    method: Literal["pearson", "spearman"]
    pearson: Scores = Field(description="category -> category -> correlation across candidates")
    spearman: Scores
    tau: float
    absolute: bool
    weak_categories: list[str]
    constant_categories: list[str]
    explanation: str
    warnings: list[str]


class ExpertChoice(_Result):
    """Why a candidate is an ingredient: best in `category` by `margin` (category None: best single)."""

    category: str | None
    candidate: str
    score: float | None
    runner_up: str | None
    runner_up_score: float | None
    margin: float | None
    reason: str


class AnalysisResult(_Result):
    """The analyse step: correlations on the search part of dev, the experts and the ingredient pool."""

    correlation: CorrelationResult
    experts: list[ExpertChoice]
    expert_candidates: list[str] = Field(description="the ingredients, in order of first choice")
    experts_fallback: bool
    best_single: str = Field(description="the best single candidate by its average on all of dev")
    warnings: list[str]
    similarity: SimilarityResult | None = Field(
        None, description="the basin check: how alike the candidates' weights are, per layer group"
    )


# --- search ------------------------------------------------------------------------------------------
class TrialResult(_Result):
    number: int
    state: Literal["COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"]
    objective: float | None
    best_so_far: float | None
    weights: Weights
    layer_weights: LayerWeights | None = None
    category_scores: dict[str, float]
    evaluated: bool = Field(description="False: the result of an earlier trial with the same weights")
    timings: dict[str, float]


class SearchSummary(_Result):
    """The weight search: its study (in Optuna's database) and every trial."""

    study: str
    sampler: str
    space: str
    n_trials: int = Field(description="finished trials (complete or pruned)")
    evaluations: int = Field(description="model evaluations run over the study's life")
    best_dev_objective: float | None
    best_trial: int
    history: list[TrialResult] = Field(default_factory=list)


# --- select ------------------------------------------------------------------------------------------
class ContenderResult(_Result):
    """A model compared on the selection part, with its test average (reported, never used to choose)."""

    name: str
    label: str
    kind: Literal["single", "soup"]
    average: float = Field(description="on the selection part")
    diff: float = Field(description="minus the best single candidate's selection average")
    low: float = Field(description="simultaneous lower confidence bound of diff")
    passed: bool
    search_average: float | None
    test_average: float
    trial: int | None
    weights: Weights
    layer_weights: LayerWeights | None = None


class SelectionResult(_Result):
    chosen: str
    kind: Literal["single", "soup"]
    reference: str
    best_soup: str | None
    level: float
    iterations: int
    min_gain: float
    reason: str
    contenders: list[ContenderResult]
    fraction: float = Field(description="share of dev examples in the selection part (0: none kept out)")


# --- finalize ----------------------------------------------------------------------------------------
class GreedyStep(_Result):
    candidate: str
    objective: float
    kept: bool


class BaselineResult(_Result):
    label: str
    kind: Literal["soup", "ensemble", "extra"] = Field(
        "soup",
        description="soup: a weight average of `members`; ensemble: their output ensemble (the mean of "
        "their next-token log-probabilities, renormalised; `weights` equal); extra: a model folder",
    )
    members: list[str]
    weights: Weights
    dev_average: float | None = Field(description="on the search part of dev (None: not scored on dev)")
    test: dict[str, float]
    test_average: float
    path: str | None = Field(None, description="the folder of an extra baseline (a schedule's champion)")
    steps: list[GreedyStep] | None = None
    evaluations: int | None = None


class NotScored(_Result):
    path: str
    error: str


class SoupResult(_Result):
    """The soup written to disk: the chosen one, or the best on the selection part (not recommended)."""

    path: str
    source: str
    label: str
    recommended: bool
    method: str
    dtype: str
    dev_average: float | None
    selection_average: float
    test: dict[str, float]
    test_average: float
    test_average_interval: tuple[float, float]
    test_average_from_disk: float
    intervals: dict[str, Interval] = Field(description="vs_<baseline>: the soup minus that baseline on test")
    ensemble_gain_kept: float | None = Field(
        None,
        description="(soup - best single) / (ensemble - best single) on the test average: the share of the "
        "output ensemble's gain over the best single candidate that the soup keeps (None: no ensemble "
        "scored, or it does not beat the best single; see ensemble_note)",
    )
    ensemble_note: str | None = Field(None, description="why ensemble_gain_kept is None, when it is")


class DevParts(_Result):
    """The candidates' scores on the search and selection parts of dev (empty: no part kept out)."""

    search_scores: Scores = Field(default_factory=dict)
    search_average: Averages = Field(default_factory=dict)
    select_scores: Scores = Field(default_factory=dict)
    select_average: Averages = Field(default_factory=dict)


class Report(_Result):
    """Everything a run produced, verdict first: report.json, and what every other output reads."""

    verdict: str = Field(description="use the soup (and by how much on test), or keep a candidate")
    decision: Decision
    name: str
    suite: str
    created: str
    soce_version: str
    recipe: RunRecipe
    candidates: list[str]
    candidate_paths: dict[str, str]
    categories: list[str]
    dev_scores: Scores
    dev_average: Averages
    dev_parts: DevParts
    test_scores: Scores
    test_average: Averages
    correlation: CorrelationResult
    experts: list[ExpertChoice]
    expert_candidates: list[str]
    experts_fallback: bool
    best_single: str
    weights: Weights = Field(description="the written soup's weights")
    layer_weights: LayerWeights | None = None
    search: SearchSummary
    selection: SelectionResult
    baselines: dict[str, BaselineResult]
    baselines_not_scored: dict[str, NotScored]
    soup: SoupResult
    similarity: SimilarityResult | None = Field(
        None, description="the basin check of the candidates (the analyse step's), per layer group"
    )
    summaries: dict[str, dict[str, float | None]] = Field(
        default_factory=dict,
        description="the suite's summary columns on test (e.g. BFCL's non-live and live AST accuracy): "
        "summary -> model (candidate, baseline, soup) -> value",
    )
    seconds: dict[str, float] = Field(
        description="wall seconds per step: score, analyse, search, select (baselines and the final "
        "choice), finalize (the whole finalize step, select included, until this report), and total (the "
        "job from its start step until this report, across workers)"
    )
    warnings: list[str]
    interpolation: InterpolationCurve | None = Field(
        None,
        description="the dev curve (all of dev) along the line between the soup's two largest ingredients; "
        "None when turned off (recipe interpolation_points: 0), when the soup has fewer than two "
        "ingredients with a weight, or when it could not be scored (see warnings)",
    )

    def as_json(self) -> dict[str, Any]:
        """The report as JSON data (NaN and infinities as null), as report.json and the API hold it."""
        return self.model_dump(mode="json")


def stored_report(analysis: dict[str, Any] | None) -> Report | None:
    """The Report a finished job stored (Job.analysis["report"]); None while the job has none."""
    data = (analysis or {}).get("report")
    if not isinstance(data, dict) or "verdict" not in data:
        return None
    return Report.model_validate(data)


def report_files(analysis: dict[str, Any] | None) -> dict[str, str]:
    """Where a finished job wrote report.json and report.html ({"json": path, "html": path}), or {}."""
    files = (analysis or {}).get("files")
    return {k: str(v) for k, v in files.items()} if isinstance(files, dict) else {}


def soup_scores(report: Report) -> dict[str, Any]:
    """The soup row's scores (the soups API and the schedules' promotion gate read them), from a Report."""
    soup = report.soup
    return {
        "verdict": report.verdict,
        "decision": report.decision.model_dump(mode="json"),
        "recommended": soup.recommended,
        "dev_average": soup.dev_average,
        "selection_average": soup.selection_average,
        "test": soup.test,
        "test_average": soup.test_average,
        "test_average_interval": list(soup.test_average_interval),
        "test_average_from_disk": soup.test_average_from_disk,
        "intervals": {k: v.model_dump(mode="json") for k, v in soup.intervals.items()},
        "baselines": {
            name: {"test_average": b.test_average, "dev_average": b.dev_average}
            for name, b in report.baselines.items()
        },
    }
