"""Scores: per task, per category (weighted mean of its tasks) and overall, and the candidate matrix."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from soce.errors import EvaluationError
from soce.schemas.suite import PartName, Split, SuiteSpec


class TaskScore(BaseModel):
    """One task's metric value with its standard error and number of examples."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    metric: str
    value: float
    stderr: float | None = None
    n: int | None = None
    cached: bool = Field(False, description="read from the score cache instead of evaluated")
    samples: tuple[float, ...] | None = Field(
        None,
        description="per-document values of the metric in document order, when asked for (a soup's are "
        "cached with its scores, a checkpoint's are not)",
        exclude_if=lambda v: v is None,  # absent from dumps unless filled: existing outputs keep their shape
    )


class CategoryScore(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    category: str
    value: float
    stderr: float | None = None
    n: int | None = None


def weighted_mean(
    parts: Sequence[tuple[float, float | None, int | None, float]],
) -> tuple[float, float | None, int | None]:
    """(value, stderr, n) of a weighted mean of (value, stderr, n, weight); stderr assumes independence."""
    total = sum(w for *_, w in parts)
    value = sum(v * w for v, _, _, w in parts) / total
    stderrs = [s for _, s, _, _ in parts]
    stderr = (
        math.sqrt(sum((w / total) ** 2 * s**2 for (_, s, _, w) in parts if s is not None))
        if all(s is not None for s in stderrs)
        else None
    )
    ns = [n for _, _, n, _ in parts]
    return value, stderr, (sum(ns) if all(n is not None for n in ns) else None)  # type: ignore[arg-type]


class SuiteScores(BaseModel):
    """One candidate on one split of a suite; `average` weighs categories by their weight."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    candidate: str
    suite: str
    split: Split
    part: PartName | None = Field(
        None,
        description="the part of dev scored (search or select), if not all of it",
        exclude_if=lambda v: v is None,
    )
    evaluator: str
    tasks: dict[str, TaskScore] = Field(default_factory=dict)
    categories: dict[str, CategoryScore]
    average: float
    average_stderr: float | None = None

    @classmethod
    def aggregate(
        cls,
        suite: SuiteSpec,
        split: Split,
        *,
        candidate: str,
        evaluator: str,
        tasks: Mapping[str, TaskScore],
        categories: Mapping[str, CategoryScore] | None = None,
        part: PartName | None = None,
    ) -> SuiteScores:
        """Category scores from `tasks` (unless given in `categories`), then the overall average."""
        cats: dict[str, CategoryScore] = {}
        for c in suite.categories:
            if categories and c.name in categories:
                cats[c.name] = categories[c.name]
                continue
            missing = [t.name for t in c.tasks if t.name not in tasks]
            if missing:
                raise EvaluationError(
                    f"{candidate}: no score for task(s) {', '.join(missing)} of category {c.name!r}"
                )
            parts = [(tasks[t.name].value, tasks[t.name].stderr, tasks[t.name].n, t.weight) for t in c.tasks]
            value, stderr, n = weighted_mean(parts)
            cats[c.name] = CategoryScore(category=c.name, value=value, stderr=stderr, n=n)
        avg, avg_se, _ = weighted_mean(
            [(cats[c.name].value, cats[c.name].stderr, cats[c.name].n, c.weight) for c in suite.categories]
        )
        return cls(
            candidate=candidate,
            suite=suite.name,
            split=split,
            part=part,
            evaluator=evaluator,
            tasks=dict(tasks),
            categories=cats,
            average=avg,
            average_stderr=avg_se,
        )

    @property
    def cached_tasks(self) -> int:
        return sum(t.cached for t in self.tasks.values())


class ScoreMatrix(BaseModel):
    """S[candidate, category] with standard errors and n; rows follow `candidates`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    suite: str
    split: Split
    part: PartName | None = Field(
        None,
        description="the part of dev scored (search or select), if not all of it",
        exclude_if=lambda v: v is None,
    )
    evaluator: str
    candidates: list[str]
    categories: list[str]
    values: list[list[float]]
    stderr: list[list[float | None]]
    n: list[list[int | None]]
    average: list[float]
    scores: list[SuiteScores] = Field(default_factory=list, description="the per-candidate details")

    @classmethod
    def from_scores(cls, scores: Sequence[SuiteScores]) -> ScoreMatrix:
        if not scores:
            raise ValueError("a score matrix needs at least one candidate")
        names = [s.candidate for s in scores]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:  # rows are read back by name (reports, CSV): two under one name would merge
            raise EvaluationError(f"a score matrix names each candidate once; {', '.join(twice)} twice")
        first = scores[0]
        cats = list(first.categories)
        return cls(
            suite=first.suite,
            split=first.split,
            part=first.part,
            evaluator=first.evaluator,
            candidates=[s.candidate for s in scores],
            categories=cats,
            values=[[s.categories[c].value for c in cats] for s in scores],
            stderr=[[s.categories[c].stderr for c in cats] for s in scores],
            n=[[s.categories[c].n for c in cats] for s in scores],
            average=[s.average for s in scores],
            scores=list(scores),
        )

    def to_csv(self) -> str:
        """One row per candidate: its category scores and the average."""
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["candidate", *self.categories, "average"])
        for cand, row, avg in zip(self.candidates, self.values, self.average, strict=True):
            w.writerow([cand, *(f"{v:.6g}" for v in row), f"{avg:.6g}"])
        return out.getvalue()
