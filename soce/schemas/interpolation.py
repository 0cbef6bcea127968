"""An interpolation curve: scores along the straight line theta(t) = (1-t)*A + t*B between two checkpoints.

Fine-tunes of one base that average well lie in one basin: the score changes smoothly between them.
A dip in the middle (the score well below the straight line between the two ends) says the pair is
not linearly connected, and a soup of them is unlikely to help. `soce interpolate` and the run report
(`Report.interpolation`) hold one of these.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from soce.schemas.suite import PartName, Split


class InterpolationPoint(BaseModel):
    """The model at `t` (0: A, 1: B) scored on the curve's split."""

    model_config = ConfigDict(extra="forbid")

    t: float = Field(ge=0, le=1)
    categories: dict[str, float] = Field(description="category -> score")
    average: float = Field(description="the suite's weighted mean over categories")
    average_stderr: float | None = None


class InterpolationCurve(BaseModel):
    """Scores along the line between checkpoints A (t=0) and B (t=1), and whether it dips."""

    model_config = ConfigDict(extra="forbid")

    a: str = Field(description="label of the checkpoint at t=0")
    b: str = Field(description="label of the checkpoint at t=1")
    a_path: str
    b_path: str
    suite: str
    split: Split
    part: PartName | None = Field(None, description="the part of dev scored; None: all of the split")
    points: list[InterpolationPoint] = Field(min_length=2, description="evenly spaced t, both ends included")
    ends: tuple[float, float] = Field(description="the average at t=0 (A) and at t=1 (B)")
    barrier: float = Field(
        description="max over t of (the straight line between the end averages minus the average at t); "
        "0 when no point lies below that line"
    )
    barrier_t: float = Field(description="the t where the barrier is reached")
    category_barriers: dict[str, float] = Field(description="the same measure per category")
    dip: float = Field(
        description="how far the lowest point inside (0, 1) lies below the lower end's average (0: not below)"
    )
    threshold: float = Field(description="a barrier above this (and above twice its standard error) is a dip")
    linearly_connected: bool = Field(description="no clear barrier: the pair lies in one basin on this split")
    conclusion: str
    seconds: dict[str, float] = Field(default_factory=dict, description="merge and evaluate, summed")
