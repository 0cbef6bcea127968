"""Paired bootstrap confidence intervals for the difference of two models' scores on the same examples.

Each resample draws every task's examples with replacement, the same draw for both models (paired),
recomputes task means, category means (weighted by task weight) and the average over categories
(weighted by category weight), and records soup minus baseline. The interval is the percentile one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    diff: float  # observed difference of averages, a - b
    low: float
    high: float
    level: float
    iterations: int

    def as_dict(self) -> dict:
        return asdict(self)


def paired_bootstrap(
    a: Mapping[str, Sequence[float]],
    b: Mapping[str, Sequence[float]],
    structure: Sequence[tuple[float, Sequence[tuple[str, float]]]],
    *,
    iterations: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Interval for avg(a) - avg(b): `a`, `b` give per-example values per task, in the same order.

    `structure` lists categories as (category weight, [(task, task weight), ...]).
    """
    rng = np.random.default_rng(seed)
    cat_total = sum(w for w, _ in structure)
    observed = 0.0
    samples = np.zeros(iterations, dtype=np.float64)
    for cat_weight, tasks in structure:
        task_total = sum(w for _, w in tasks)
        for task, task_weight in tasks:
            x, y = np.asarray(a[task], dtype=np.float64), np.asarray(b[task], dtype=np.float64)
            if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
                raise ValueError(
                    f"task {task!r}: per-example scores of different lengths ({x.shape} vs {y.shape})"
                )
            d = x - y
            scale = (cat_weight / cat_total) * (task_weight / task_total)
            observed += scale * float(d.mean())
            # mean of d over a resample = counts @ d / n, with multinomial counts: memory O(iterations)
            counts = rng.multinomial(len(d), np.full(len(d), 1.0 / len(d)), size=iterations)
            samples += scale * (counts @ d) / len(d)
    alpha = (1.0 - level) / 2
    low, high = np.quantile(samples, [alpha, 1.0 - alpha])
    return Interval(observed, float(low), float(high), level, iterations)
