"""A study's trials as records: what each trial evaluated and scored, and the search's result.

Trial user attributes hold the weights, category scores, objective and timings (and `reused_from`
when a point was evaluated before); `record` reads them back whatever process wrote them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optimizer.space import SearchSpace, SoupWeights

if TYPE_CHECKING:
    import optuna


class Scored(dict):
    """Category scores of one evaluation, with where its time went (seconds by part)."""

    def __init__(self, scores: Mapping[str, float], timings: Mapping[str, float] | None = None) -> None:
        super().__init__(scores)
        self.timings = dict(timings or {})


@dataclass(frozen=True)
class TrialRecord:
    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING
    objective: float | None
    weights: SoupWeights | None
    category_scores: dict[str, float]
    evaluated: bool  # False: the result of an earlier trial with the same weights was reused
    timings: dict[str, float]

    def as_dict(self, best_so_far: float | None) -> dict[str, Any]:
        w = self.weights.as_dict() if self.weights else {"weights": {}}
        return {
            "number": self.number,
            "state": self.state,
            "objective": self.objective,
            "best_so_far": best_so_far,
            **w,
            "category_scores": self.category_scores,
            "evaluated": self.evaluated,
            "timings": self.timings,
        }


@dataclass(frozen=True)
class SearchResult:
    study_name: str
    sampler: str
    space: str
    n_trials: int
    evaluations: int  # model evaluations actually run (over the study's whole life)
    best: TrialRecord
    history: list[TrialRecord]

    def history_dicts(self) -> list[dict[str, Any]]:
        out, best = [], None
        for t in self.history:
            if t.state == "COMPLETE" and t.objective is not None:
                best = t.objective if best is None else max(best, t.objective)
            out.append(t.as_dict(best))
        return out


def objective_of(
    scores: Mapping[str, float], categories: Sequence[str], weights: Mapping[str, float]
) -> float:
    total = sum(weights.get(c, 1.0) for c in categories)
    return sum(scores[c] * weights.get(c, 1.0) for c in categories) / total


def record(trial: optuna.trial.FrozenTrial, space: SearchSpace) -> TrialRecord:
    attrs = trial.user_attrs
    weights = None
    try:
        weights = space.from_params(trial.params) if trial.params or space.k == 1 else None
    except (KeyError, IndexError):
        weights = None
    obj = attrs.get("objective")
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        objective=float(obj) if obj is not None else None,
        weights=weights,
        category_scores={k: float(v) for k, v in (attrs.get("category_scores") or {}).items()},
        evaluated=attrs.get("reused_from") is None,
        timings={k: float(v) for k, v in (attrs.get("timings") or {}).items()},
    )
