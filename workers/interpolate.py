"""Interpolation curves: two checkpoints and the models on the straight line between them, scored.

theta(t) = (1-t)*A + t*B for N evenly spaced t in [0, 1], both ends included. Each point is merged
into one resident model in place (workers.resident.ResidentSoup): a curve costs N evaluations, no
disk and no second model. The ends are A and B alone, bit for bit, so they score what A and B score
from their folders.

The measure of a dip is the barrier (Frankle et al., 2020): the largest gap, over t, between the
straight line joining the two end scores and the score at t. It is 0 when no point lies below that line.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from optimizer.space import SoupWeights
from soce.errors import InterpolationError, SoceError
from soce.schemas.interpolation import InterpolationCurve, InterpolationPoint
from soce.schemas.scores import SuiteScores
from soce.schemas.suite import DevPart, Split, SuiteSpec
from workers.progress import Stages
from workers.resident import ResidentSoup

log = logging.getLogger(__name__)

# A barrier counts as a dip above 0.05 (5 points of a 0..1 score): the standard error of an accuracy
# near 0.5 on 400 examples is 0.025, so smaller gaps are within the noise of typical dev sets. It must
# also exceed twice the standard error of the score where it is reached (small dev sets are noisier).
BARRIER_THRESHOLD = 0.05
MAX_POINTS = 101  # t in steps of 0.01; a finer line shows nothing more and costs an evaluation a point


def interpolation_ts(points: int) -> list[float]:
    """`points` evenly spaced t in [0, 1], both ends included (exactly 0.0 and 1.0)."""
    if isinstance(points, bool) or not isinstance(points, int) or not 2 <= points <= MAX_POINTS:
        raise InterpolationError(
            f"points must be a whole number from 2 (the two ends) to {MAX_POINTS}, not {points!r}"
        )
    return [i / (points - 1) for i in range(points)]


def barrier(ts: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """max over t of ((1-t)*values[0] + t*values[-1] - value(t)), and the first t reaching it.

    ts run from 0 to 1; the ends lie on the line, so the barrier is never below 0 (then at t=0).
    """
    if len(ts) != len(values) or len(ts) < 2:
        raise InterpolationError(f"a curve needs at least 2 points and one value per t, got {len(values)}")
    lo, hi = values[0], values[-1]
    best, at = 0.0, ts[0]
    for t, v in zip(ts, values, strict=True):
        gap = (1 - t) * lo + t * hi - v
        if gap > best:
            best, at = gap, t
    return best, at


def dip(values: Sequence[float]) -> float:
    """How far the lowest point inside (0, 1) lies below the lower end (0: not below, or no such point)."""
    inside = values[1:-1]
    return max(0.0, min(values[0], values[-1]) - min(inside)) if inside else 0.0


def conclusion_line(
    barrier_value: float, at: float, stderr: float | None, threshold: float, split: str
) -> tuple[bool, str]:
    """Whether the pair is linearly connected on `split`, and the sentence that says so."""
    noise = 2 * stderr if stderr is not None and math.isfinite(stderr) else 0.0
    if barrier_value > threshold and barrier_value > noise:
        return False, (
            f"not linearly connected: at t={at:.2f} the {split} average lies {barrier_value:.3f} below the "
            f"straight line between the ends (barrier {barrier_value:.3f} > {threshold:g}); the two "
            "checkpoints sit in different basins, and averaging them lands in the gap between"
        )
    if barrier_value > threshold:
        why = f"barrier {barrier_value:.3f} is within twice its standard error, {noise / 2:.3f}"
    else:
        why = f"barrier {barrier_value:.3f} <= {threshold:g}"
    return True, f"linearly connected on {split}: no clear dip between the ends ({why})"


def interpolation_curve(
    resident: ResidentSoup,
    a: str,
    b: str,
    *,
    points: int,
    split: Split = "dev",
    part: DevPart | None = None,
    threshold: float = BARRIER_THRESHOLD,
    progress: Callable[[int], None] | None = None,
    cache: bool = False,
    engine: Any = None,
) -> InterpolationCurve:
    """Score theta(t) = (1-t)*A + t*B at `points` evenly spaced t on `split` (on `part` of dev, if
    given), merging each point into `resident`'s model in place. a, b: labels of `resident.paths`.
    cache: each point's scores through the soup score cache (of `engine`), as the job's other soups."""
    ts = interpolation_ts(points)
    for label in (a, b):
        if label not in resident.paths:
            raise InterpolationError(
                f"no resident checkpoint {label!r}; resident: {', '.join(resident.paths)}"
            )
    if a == b:
        raise InterpolationError(f"the two ends are the same checkpoint {a!r}; give two different ones")
    if part is not None and split != "dev":
        raise InterpolationError(f"only the dev split has parts, not the {split} split")
    suite: SuiteSpec = resident.suite
    rows: list[InterpolationPoint] = []
    seconds = {"merge": 0.0, "evaluate": 0.0}
    for t in ts:
        # the ends are A and B alone: bit for bit the checkpoints, with no zero-weighted partner
        if t == 0.0:
            weights = resident.single(a)
        elif t == 1.0:
            weights = resident.single(b)
        else:
            weights = SoupWeights((a, b), (1.0 - t, t))
        started = time.perf_counter()
        if cache:
            tasks = resident.cached_scores(weights, split, part=part, engine=engine, timings=seconds)
        else:
            tasks, timings = resident.score_tasks(weights, split, part=part)
            for k in seconds:
                seconds[k] += timings.get(k, 0.0)
        scores = SuiteScores.aggregate(
            suite,
            split,
            candidate=f"{a}..{b} t={t:g}",
            evaluator="interpolation",
            tasks=tasks,
            part=part.name if part else None,
        )
        rows.append(
            InterpolationPoint(
                t=t,
                categories={c: s.value for c, s in scores.categories.items()},
                average=scores.average,
                average_stderr=scores.average_stderr,
            )
        )
        log.info("t=%.3f: %s average %.4f (%.2fs)", t, split, scores.average, time.perf_counter() - started)
        if progress:
            progress(1)
    averages = [p.average for p in rows]
    value, at = barrier(ts, averages)
    stderr = rows[ts.index(at)].average_stderr
    connected, conclusion = conclusion_line(value, at, stderr, threshold, split)
    return InterpolationCurve(
        a=a,
        b=b,
        a_path=str(resident.paths[a]),
        b_path=str(resident.paths[b]),
        suite=suite.name,
        split=split,
        part=part.name if part else None,
        points=rows,
        ends=(averages[0], averages[-1]),
        barrier=value,
        barrier_t=at,
        category_barriers={c: barrier(ts, [p.categories[c] for p in rows])[0] for c in suite.category_names},
        dip=dip(averages),
        threshold=threshold,
        linearly_connected=connected,
        conclusion=conclusion,
        seconds=seconds,
    )


def interpolate_checkpoints(
    a: Path,
    b: Path,
    suite: SuiteSpec,
    evaluator: Any,
    *,
    points: int,
    split: Split = "dev",
    threshold: float = BARRIER_THRESHOLD,
    progress: Callable[[int], None] | None = None,
) -> InterpolationCurve:
    """The curve between two checkpoint folders: checked compatible, loaded once, scored in memory."""
    from workers.pipeline import candidate_labels, ensure_soupable

    interpolation_ts(points)  # a bad count fails before any model is loaded
    if not callable(getattr(evaluator, "evaluate_model", None)):
        raise InterpolationError(
            f"evaluator {getattr(evaluator, 'name', evaluator)!r} cannot score a model in memory; use lm_eval"
        )
    a, b = Path(a).expanduser().resolve(), Path(b).expanduser().resolve()
    if a == b:
        raise InterpolationError(f"A and B are the same folder {a}; give two different checkpoints")
    ensure_soupable([a, b])  # names the folder and the first problem (tensors, shapes, dtypes, tokenizer)
    paths = candidate_labels([a, b])
    resident = ResidentSoup(paths, evaluator, suite)
    label_a, label_b = paths
    return interpolation_curve(
        resident, label_a, label_b, points=points, split=split, threshold=threshold, progress=progress
    )


def interpolation_pair(weights: SoupWeights) -> tuple[str, str] | None:
    """The two ingredients with the largest weights (larger first; ties in ingredient order; a layer-wise
    soup's mean weights over its groups), or None when fewer than two have a weight above 0."""
    ranked = sorted(
        (i for i, w in enumerate(weights.weights) if w > 0), key=lambda i: (-weights.weights[i], i)
    )
    if len(ranked) < 2:
        return None
    return weights.experts[ranked[0]], weights.experts[ranked[1]]


def report_curve(
    resident: ResidentSoup,
    weights: SoupWeights,
    *,
    points: int,
    stages: Stages | None = None,
    engine: Any = None,
) -> tuple[InterpolationCurve | None, list[str]]:
    """The report's curve: all of dev (the search and selection parts together, as the candidates' dev
    scores are reported) between the soup's two largest ingredients; None when `points` is 0 or the
    soup has fewer than two ingredients. A failure is returned as a warning, never raised."""
    pair = interpolation_pair(weights)
    if not points or pair is None:
        return None, []
    stages = stages or Stages(quiet=True)
    try:
        with stages.stage("interpolate", total=points, unit="point") as advance:
            curve = interpolation_curve(
                resident, *pair, points=points, split="dev", progress=advance, cache=True, engine=engine
            )
    except SoceError as e:
        log.warning("the interpolation curve of %s and %s was not scored: %s", *pair, e)
        return None, [f"the interpolation curve between {pair[0]} and {pair[1]} was not scored: {e}"]
    log.info("interpolation %s..%s: %s", *pair, curve.conclusion)
    return curve, []
