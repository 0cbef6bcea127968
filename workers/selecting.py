"""The final choice, on the selection part of dev that neither the search nor the greedy soup saw.

The contenders (the best single candidate, the best few trials with distinct weights, the greedy and
uniform soups) are scored there per example; optimizer.selection keeps the best single candidate
unless a soup is ahead with a simultaneous lower confidence bound above zero.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from optimizer.records import SearchResult, TrialRecord
from optimizer.selection import Contender, Selection, select_final
from optimizer.space import SoupWeights
from soce.errors import EvaluationError
from soce.schemas.suite import SuiteSpec
from workers.pipeline import Analysis, Baseline, RunInputs, dev_parts
from workers.progress import Stages
from workers.resident import ResidentSoup

log = logging.getLogger(__name__)

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
    engine: Any = None,
) -> Selected:
    """Score the contenders on the selection part of dev and choose the final model there (their
    scores through the score cache of `engine`, the app database).

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
            tasks = resident.cached_scores(w, "dev", samples=True, part=select_part, engine=engine)
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
