"""Interpolation curves: the ends are the checkpoints, the midpoint is the 0.5/0.5 soup written to disk,
the barrier and the conclusion, and the errors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from optimizer.space import SoupWeights
from soce.errors import IncompatibleCheckpointsError, InterpolationError
from soce.schemas.scores import SuiteScores, TaskScore
from soce.schemas.suite import SuiteSpec
from soce.zoo import LlamaShape, make_related_checkpoints
from tests.evaluators.task_folder import Zoo, write_zoo_tasks
from workers.interpolate import (
    barrier,
    conclusion_line,
    dip,
    interpolate_checkpoints,
    interpolation_curve,
    interpolation_pair,
    interpolation_ts,
)
from workers.resident import ResidentSoup

SHAPE = LlamaShape(hidden=32, layers=2, intermediate=64)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    """A task folder and two tiny checkpoints of one random base, far enough apart to score differently."""
    root = write_zoo_tasks(tmp_path_factory.mktemp("interp"))
    candidates = make_related_checkpoints(root / "candidates", 2, shape=SHAPE, spread=3.0)
    return Zoo(root, SuiteSpec.from_file(root / "suite.yaml"), candidates)


@pytest.fixture(scope="module")
def evaluator() -> Any:
    from evaluators import build_evaluator

    return build_evaluator("lm_eval")


def from_disk(evaluator: Any, folder: Path, suite: SuiteSpec) -> SuiteScores:
    tasks = evaluator.score_tasks(folder, suite, "dev", suite.tasks)
    return SuiteScores.aggregate(suite, "dev", candidate=folder.name, evaluator="disk", tasks=tasks)


def test_the_ends_are_the_checkpoints_and_the_midpoint_is_the_written_soup(
    pair: Zoo, evaluator: Any, tmp_path: Path
) -> None:
    from soce.merging import write_soup
    from soce.schemas.merge import MergeRecipe

    a, b = pair.candidates
    curve = interpolate_checkpoints(a, b, pair.suite, evaluator, points=5)
    assert [p.t for p in curve.points] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert (curve.a, curve.b, curve.split, curve.part) == ("candidate-0", "candidate-1", "dev", None)
    # the ends are A and B themselves: their own dev scores, scored from their folders
    for point, folder in ((curve.points[0], a), (curve.points[-1], b)):
        own = from_disk(evaluator, folder, pair.suite)
        assert point.categories == {c: s.value for c, s in own.categories.items()}
        assert point.average == own.average
    assert curve.ends == (curve.points[0].average, curve.points[-1].average)
    # the midpoint is the soup `soce merge` writes with weights 0.5 / 0.5, scored from disk
    recipe = MergeRecipe(
        method="linear", candidates=[{"path": str(a), "weight": 0.5}, {"path": str(b), "weight": 0.5}]
    )
    mid = from_disk(evaluator, write_soup(recipe, tmp_path / "mid").path, pair.suite)
    for category, score in mid.categories.items():
        assert curve.points[2].categories[category] == pytest.approx(score.value, abs=1e-9)
    assert curve.points[2].average == pytest.approx(mid.average, abs=1e-9)
    # the measures agree with the points
    averages = [p.average for p in curve.points]
    assert (curve.barrier, curve.barrier_t) == barrier([p.t for p in curve.points], averages)
    assert curve.dip == dip(averages) and set(curve.category_barriers) == set(pair.suite.category_names)
    assert curve.linearly_connected == curve.conclusion.startswith("linearly connected")
    assert curve.seconds["evaluate"] > 0


def test_the_barrier_of_a_hand_made_curve() -> None:
    ts = interpolation_ts(5)
    assert ts == [0.0, 0.25, 0.5, 0.75, 1.0]
    # the line from 0.6 to 0.4 is 0.55, 0.5, 0.45 inside: the gaps are 0.05, 0.3 and 0
    assert barrier(ts, [0.6, 0.5, 0.2, 0.45, 0.4]) == pytest.approx((0.3, 0.5))
    assert dip([0.6, 0.5, 0.2, 0.45, 0.4]) == pytest.approx(0.2)
    # above the line everywhere: no barrier, no dip
    assert barrier(ts, [0.4, 0.5, 0.6, 0.55, 0.5]) == (0.0, 0.0)
    assert dip([0.4, 0.5, 0.6, 0.55, 0.5]) == 0.0
    # sagging below the line but not below the lower end: a barrier without a dip
    assert barrier(ts, [0.8, 0.5, 0.45, 0.42, 0.4]) == pytest.approx((0.2, 0.25))  # line: 0.7, 0.6, 0.5
    assert dip([0.8, 0.5, 0.45, 0.42, 0.4]) == 0.0
    assert barrier([0.0, 1.0], [0.3, 0.7]) == (0.0, 0.0) and dip([0.3, 0.7]) == 0.0
    connected, line = conclusion_line(0.3, 0.5, 0.02, 0.05, "dev")
    assert not connected and line.startswith("not linearly connected: at t=0.50")
    connected, line = conclusion_line(0.3, 0.5, 0.2, 0.05, "dev")  # within twice its standard error
    assert connected and "standard error" in line
    connected, line = conclusion_line(0.01, 0.25, None, 0.05, "dev")
    assert connected and line.startswith("linearly connected on dev")


class DippingSoup:
    """A stand-in for ResidentSoup: task scores from a function of t, without a model."""

    def __init__(
        self, paths: Mapping[str, Path], evaluator: Any = None, suite: SuiteSpec | None = None, **_: Any
    ) -> None:
        self.paths, self.suite = dict(paths), suite
        self.loaded: list[tuple[Sequence[str], Sequence[float]]] = []

    def single(self, label: str) -> SoupWeights:
        return SoupWeights((label,), (1.0,))

    def score_tasks(self, weights: SoupWeights, split: str, **_: Any) -> tuple[dict[str, TaskScore], dict]:
        self.loaded.append((weights.experts, weights.weights))
        a, _ = self.paths
        t = 1.0 - weights.weights[0] if weights.experts[0] == a else 1.0
        value = 0.7 - 1.2 * t * (1 - t)  # 0.7 at both ends, 0.4 at t=0.5
        assert self.suite is not None
        tasks = {
            task.name: TaskScore(task=task.name, metric=task.metric, value=value, stderr=0.01, n=100)
            for task in self.suite.tasks
        }
        return tasks, {"merge": 0.0, "evaluate": 0.001}


def test_a_dip_in_the_middle_is_not_linearly_connected(pair: Zoo) -> None:
    resident = DippingSoup(dict(zip("ab", pair.candidates, strict=True)), suite=pair.suite)
    ticks: list[int] = []
    curve = interpolation_curve(resident, "a", "b", points=5, progress=ticks.append)  # type: ignore[arg-type]
    assert ticks == [1] * 5
    # the ends are each checkpoint alone; the points inside weigh both
    assert resident.loaded[0] == (("a",), (1.0,)) and resident.loaded[-1] == (("b",), (1.0,))
    assert resident.loaded[2] == (("a", "b"), (0.5, 0.5))
    assert curve.barrier == pytest.approx(0.3) and curve.barrier_t == 0.5 and curve.dip == pytest.approx(0.3)
    assert curve.category_barriers == pytest.approx({c: 0.3 for c in pair.suite.category_names})
    assert not curve.linearly_connected and curve.conclusion.startswith("not linearly connected")


def test_the_report_pairs_the_two_largest_ingredients() -> None:
    assert interpolation_pair(SoupWeights(("x", "y", "z"), (0.2, 0.5, 0.3))) == ("y", "z")
    assert interpolation_pair(SoupWeights(("x", "y", "z"), (0.4, 0.2, 0.4))) == ("x", "z")  # ties: in order
    assert interpolation_pair(SoupWeights(("x", "y"), (1.0, 0.0))) is None  # one ingredient with a weight
    assert interpolation_pair(SoupWeights(("x",), (1.0,))) is None


@pytest.mark.parametrize("points", [0, 1, 102, 2.5, True])
def test_a_curve_needs_two_points_or_more(points: Any) -> None:
    with pytest.raises(InterpolationError, match="points must be a whole number from 2"):
        interpolation_ts(points)


def test_bad_pairs_are_refused_before_any_model_is_loaded(
    pair: Zoo, evaluator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_model(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("workers.interpolate.ResidentSoup", no_model)
    a, b = pair.candidates
    with pytest.raises(InterpolationError, match="points must be"):
        interpolate_checkpoints(a, b, pair.suite, evaluator, points=1)
    with pytest.raises(InterpolationError, match="the same folder"):
        interpolate_checkpoints(a, a, pair.suite, evaluator, points=3)
    (wide,) = make_related_checkpoints(
        tmp_path / "wide", 1, shape=LlamaShape(hidden=48, layers=2, intermediate=64)
    )
    with pytest.raises(IncompatibleCheckpointsError, match="shape"):
        interpolate_checkpoints(a, wide, pair.suite, evaluator, points=3)


def test_labels_and_parts_are_checked(pair: Zoo) -> None:
    from soce.schemas.suite import DevPart

    resident = DippingSoup(dict(zip("ab", pair.candidates, strict=True)), suite=pair.suite)
    with pytest.raises(InterpolationError, match="no resident checkpoint 'c'; resident: a, b"):
        interpolation_curve(resident, "a", "c", points=3)  # type: ignore[arg-type]
    with pytest.raises(InterpolationError, match="same checkpoint"):
        interpolation_curve(resident, "a", "a", points=3)  # type: ignore[arg-type]
    with pytest.raises(InterpolationError, match="only the dev split has parts"):
        interpolation_curve(
            resident,
            "a",
            "b",
            points=3,
            split="test",
            part=DevPart(name="search", fraction=0.5),  # type: ignore[arg-type]
        )


def test_resident_soup_is_what_the_curve_runs_on(pair: Zoo, evaluator: Any) -> None:
    """The finalize step passes the job's resident soup (all candidates): the curve reuses its model."""
    resident = ResidentSoup(dict(zip(("x", "y"), pair.candidates, strict=True)), evaluator, pair.suite)
    model = resident.model
    curve = interpolation_curve(resident, "y", "x", points=2)
    assert resident.model is model and [p.t for p in curve.points] == [0.0, 1.0]
    assert (curve.a, curve.b) == ("y", "x") and curve.a_path == str(pair.candidates[1])
