"""Search spaces over soup weights: one simplex of expert weights, or one per layer group.

Weights are non-negative and sum to 1. A simplex of k weights is parametrised by k-1 numbers in
[0, 1] through stick-breaking with Beta(1, k-1-i) quantiles: a bijection that maps the uniform cube
onto the uniform simplex, so no trial is spent on a rescaled copy of another (as k free weights
normalised afterwards would) and CMA-ES works in the true dimension.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

SpaceName = Literal["simplex", "layerwise"]


class ParamSource(Protocol):
    """What a space asks of an Optuna trial (optuna.Trial has it)."""

    def suggest_float(self, name: str, low: float, high: float) -> float: ...


def stick_breaking(u: Sequence[float]) -> list[float]:
    """k weights on the simplex from k-1 numbers in [0, 1]; uniform in, uniform out."""
    k = len(u) + 1
    weights, rest = [], 1.0
    for i, x in enumerate(u):
        x = min(max(float(x), 0.0), 1.0)
        share = 1.0 - (1.0 - x) ** (1.0 / (k - 1 - i))  # Beta(1, k-1-i) quantile
        weights.append(rest * share)
        rest -= weights[-1]
    weights.append(max(rest, 0.0))
    return weights


def inverse_stick_breaking(w: Sequence[float]) -> list[float]:
    """The k-1 numbers in [0, 1] that give weights `w` (normalised first)."""
    total = float(sum(w))
    w = [x / total for x in w]
    k = len(w)
    u, rest = [], 1.0
    for i in range(k - 1):
        share = 0.0 if rest <= 1e-15 else min(max(w[i] / rest, 0.0), 1.0)
        u.append(1.0 - (1.0 - share) ** (k - 1 - i))
        rest -= w[i]
    return u


def grid_points(k: int, step: float = 0.1) -> list[tuple[float, ...]]:
    """The paper's grid: weights in {step .. 1-step} summing to 1, plus the uniform point.

    For step 0.1 that is C(9, k-1) points (36 for 3 experts, 84 for 4) and then uniform.
    """
    if k < 1:
        raise ValueError("a grid needs at least one expert")
    units = round(1 / step)
    if abs(units * step - 1) > 1e-9:
        raise ValueError(f"grid step {step} does not divide 1")
    if k == 1:
        return [(1.0,)]
    points: list[tuple[float, ...]] = []
    for cuts in itertools.combinations(range(1, units), k - 1):  # compositions of units into k parts >= 1
        parts = [b - a for a, b in zip((0, *cuts), (*cuts, units), strict=True)]
        points.append(tuple(round(p / units, 10) for p in parts))
    uniform = tuple(1.0 / k for _ in range(k))
    if not any(all(abs(a - b) < 1e-9 for a, b in zip(p, uniform, strict=True)) for p in points):
        points.append(uniform)
    return points


@dataclass(frozen=True)
class SoupWeights:
    """Weights of the experts: one vector (`weights`), or one per layer group (`groups`)."""

    experts: tuple[str, ...]
    weights: tuple[float, ...]
    groups: Mapping[str, tuple[float, ...]] | None = None

    def key(self, digits: int = 4) -> tuple:
        """Equal keys evaluate to the same model (up to rounding): used to skip repeated points."""
        if self.groups:
            return tuple((g, tuple(round(x, digits) for x in w)) for g, w in sorted(self.groups.items()))
        return tuple(round(x, digits) for x in self.weights)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"weights": dict(zip(self.experts, self.weights, strict=True))}
        if self.groups:
            out["layer_weights"] = {
                g: dict(zip(self.experts, w, strict=True)) for g, w in self.groups.items()
            }
        return out


def mean_weights(groups: Mapping[str, Sequence[float]]) -> tuple[float, ...]:
    k = len(next(iter(groups.values())))
    return tuple(sum(w[i] for w in groups.values()) / len(groups) for i in range(k))


@dataclass(frozen=True)
class SearchSpace:
    """The experts and how a trial's parameters become their weights."""

    experts: tuple[str, ...]
    name: SpaceName = "simplex"
    groups: tuple[str, ...] = ()  # layer groups for `layerwise`: embed, blocks[0..G-1], norm, head

    @property
    def k(self) -> int:
        return len(self.experts)

    @property
    def dimension(self) -> int:
        return (self.k - 1) * (len(self.groups) if self.name == "layerwise" else 1)

    def param_names(self, group: str | None = None) -> list[str]:
        prefix = f"{group}:" if group else ""
        return [f"{prefix}u{i}" for i in range(self.k - 1)]

    def suggest(self, trial: ParamSource) -> SoupWeights:
        """Ask the trial for this space's parameters and turn them into weights."""
        if self.k == 1:
            return SoupWeights(self.experts, (1.0,))
        if self.name == "simplex":
            w = stick_breaking([trial.suggest_float(n, 0.0, 1.0) for n in self.param_names()])
            return SoupWeights(self.experts, tuple(w))
        groups = {
            g: tuple(stick_breaking([trial.suggest_float(n, 0.0, 1.0) for n in self.param_names(g)]))
            for g in self.groups
        }
        return SoupWeights(self.experts, mean_weights(groups), groups)

    def from_params(self, params: Mapping[str, float]) -> SoupWeights:
        """Weights of a stored trial's parameters (or a grid trial's point)."""
        if "grid_point" in params:
            point = grid_points(self.k)[int(params["grid_point"])]
            return SoupWeights(self.experts, tuple(point))
        if self.k == 1:
            return SoupWeights(self.experts, (1.0,))
        if self.name == "simplex":
            return SoupWeights(self.experts, tuple(stick_breaking([params[n] for n in self.param_names()])))
        groups = {g: tuple(stick_breaking([params[n] for n in self.param_names(g)])) for g in self.groups}
        return SoupWeights(self.experts, mean_weights(groups), groups)

    def params_for(self, weights: Sequence[float]) -> dict[str, float]:
        """Parameters that give `weights` (in every group for `layerwise`), to enqueue a known point."""
        u = inverse_stick_breaking(weights)
        if self.name == "simplex":
            return dict(zip(self.param_names(), u, strict=True))
        return {n: x for g in self.groups for n, x in zip(self.param_names(g), u, strict=True)}

    def params_of(self, weights: SoupWeights) -> dict[str, float]:
        """Parameters that give `weights`, each layer group its own (to enqueue a point of any shape)."""
        if self.k == 1:
            return {}
        if self.name == "simplex" or not weights.groups:
            return self.params_for(weights.weights)
        return {
            n: x
            for g in self.groups
            for n, x in zip(self.param_names(g), inverse_stick_breaking(weights.groups[g]), strict=True)
        }
