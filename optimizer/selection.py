"""The final choice: a soup only where it is clearly ahead of the best single candidate.

The search maximises the dev score on the search part of dev, so its best trial's score there is
biased upwards (the winner's curse of many trials on noisy data). The choice is therefore made on
the selection part, which nothing before it has seen: every contender (the best single candidate,
the best few trials, the greedy and uniform soups) is scored there, each example paired across
contenders. A soup is chosen only if its gain over the best single candidate has a lower confidence
bound above `min_gain`; the bounds hold for all the soups compared at once (a max-statistic paired
bootstrap, studentised), so comparing more soups does not make a lucky one more likely to pass.
Among the soups that pass, the best on the selection part wins; equal scores go to the simpler
model. Otherwise the best single candidate is kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Kind = Literal["single", "soup"]
TIE = 1e-9  # averages closer than this are equal: the simpler model wins


@dataclass(frozen=True)
class Contender:
    """A model compared on the selection part: its per-example values per task, in document order."""

    name: str  # best_single, trial_12, greedy, uniform, uniform_experts
    label: str
    kind: Kind
    simplicity: int  # lower is simpler: a single candidate, uniform soups, greedy, searched weights
    samples: Mapping[str, Sequence[float]]


@dataclass(frozen=True)
class ContenderResult:
    name: str
    label: str
    kind: Kind
    average: float  # on the selection part
    diff: float  # minus the reference's average
    low: float  # simultaneous lower confidence bound of diff (the reference itself: 0)
    passed: bool  # low > min_gain

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Selection:
    chosen: str  # a contender's name
    kind: Kind
    reference: str  # the best single candidate's contender name
    best_soup: str | None  # the soup with the best selection average, chosen or not
    results: list[ContenderResult]
    level: float
    iterations: int
    min_gain: float
    reason: str

    def result(self, name: str) -> ContenderResult:
        return next(r for r in self.results if r.name == name)

    def as_dict(self) -> dict:
        return {
            "chosen": self.chosen,
            "kind": self.kind,
            "reference": self.reference,
            "best_soup": self.best_soup,
            "level": self.level,
            "iterations": self.iterations,
            "min_gain": self.min_gain,
            "reason": self.reason,
            "contenders": [r.as_dict() for r in self.results],
        }


def weighted_average(
    samples: Mapping[str, Sequence[float]], structure: Sequence[tuple[float, Sequence[tuple[str, float]]]]
) -> float:
    """The suite average of per-example values: task means, weighted into categories, then overall."""
    cat_total = sum(w for w, _ in structure)
    total = 0.0
    for cat_weight, tasks in structure:
        task_total = sum(w for _, w in tasks)
        for task, task_weight in tasks:
            total += (cat_weight / cat_total) * (task_weight / task_total) * float(np.mean(samples[task]))
    return total


def select_final(
    contenders: Sequence[Contender],
    structure: Sequence[tuple[float, Sequence[tuple[str, float]]]],
    *,
    reference: str = "best_single",
    level: float = 0.95,
    iterations: int = 2000,
    seed: int = 0,
    min_gain: float = 0.0,
) -> Selection:
    """Choose among `contenders` (one of them the `reference` single candidate) on their samples.

    structure: categories as (category weight, [(task, task weight), ...]). The bound used is the
    lower end of a two-sided interval at `level`, made simultaneous over the soups compared.
    """
    by_name = {c.name: c for c in contenders}
    if reference not in by_name:
        raise ValueError(f"the reference {reference!r} is not among the contenders")
    if len(by_name) != len(contenders):
        raise ValueError("two contenders have the same name")
    ref = by_name[reference]
    soups = [c for c in contenders if c.name != reference]
    tasks = [
        (task, (cw / sum(w for w, _ in structure)) * (tw / sum(w for _, w in ts)))
        for cw, ts in structure
        for task, tw in ts
    ]
    rng = np.random.default_rng(seed)
    observed = np.zeros(len(soups))
    boot = np.zeros((len(soups), iterations))
    for task, scale in tasks:
        x_ref = np.asarray(ref.samples[task], dtype=np.float64)
        n = len(x_ref)
        if n == 0:
            raise ValueError(f"task {task!r} has no example in the selection part")
        diffs = np.zeros((len(soups), n))
        for j, soup in enumerate(soups):
            x = np.asarray(soup.samples[task], dtype=np.float64)
            if x.shape != x_ref.shape:
                raise ValueError(
                    f"task {task!r}: {soup.name} has {len(x)} values, {reference} {n}: not the same examples"
                )
            diffs[j] = x - x_ref
        observed += scale * diffs.mean(axis=1)
        # one resample of the examples for every contender: the comparison stays paired
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=iterations)  # iterations x n
        boot += scale * (diffs @ counts.T) / n
    alpha = (1.0 - level) / 2
    se = boot.std(axis=1)
    varies = se > 0
    if varies.any():
        # max over soups of the studentised deviation: its (1 - alpha) quantile holds for all at once
        dev = (boot[varies] - observed[varies, None]) / se[varies, None]
        c = float(np.quantile(dev.max(axis=0), 1.0 - alpha))
    else:
        c = 0.0
    lows = np.where(varies, observed - c * se, observed)
    results = [
        ContenderResult(
            ref.name, ref.label, ref.kind, weighted_average(ref.samples, structure), 0.0, 0.0, False
        )
    ]
    base = results[0].average
    for j, soup in enumerate(soups):
        avg = weighted_average(soup.samples, structure)
        low = float(lows[j])
        # a soup equal to the reference on every example (se 0) has diff 0 and never passes
        results.append(
            ContenderResult(
                soup.name,
                soup.label,
                soup.kind,
                avg,
                avg - base,
                low,
                bool(low > min_gain and avg - base > 0),
            )
        )

    def rank(r: ContenderResult) -> tuple[float, int]:
        return (-round(r.average / TIE), by_name[r.name].simplicity)

    soup_results = [r for r in results if r.name != reference]
    best_soup = min(soup_results, key=rank).name if soup_results else None
    passing = [r for r in soup_results if r.passed]
    pct = f"{round(100 * level)}%"
    if passing:
        win = min(passing, key=rank)
        reason = (
            f"{win.label} is ahead of {ref.label} on the selection part by {100 * win.diff:+.1f} points "
            f"(simultaneous {pct} lower bound {100 * win.low:+.1f} over the {len(soups)} soup(s) compared)"
        )
        return Selection(win.name, "soup", reference, best_soup, results, level, iterations, min_gain, reason)
    if best_soup is None:
        reason = f"no soup was compared with {ref.label}"
    else:
        top = next(r for r in results if r.name == best_soup)
        reason = (
            f"no soup beat {ref.label} on the selection part: the best, {top.label}, is "
            f"{100 * top.diff:+.1f} points with a simultaneous {pct} lower bound of {100 * top.low:+.1f}"
        )
    return Selection(reference, "single", reference, best_soup, results, level, iterations, min_gain, reason)
