"""Uniform soup: the plain average of all candidates."""

from __future__ import annotations

from typing import Literal

from soce.errors import RecipeError
from soce.merging._base import MethodParams
from soce.merging.linear import Linear


class UniformParams(MethodParams):
    normalize: Literal[True] = True
    allow_negative_weights: Literal[False] = False


class Uniform(Linear):
    name = "uniform"
    summary = "plain average of all candidates (every weight 1/n)"
    Params = UniformParams

    def _weights(self) -> list[float | None]:
        given = [c.path for c in self.recipe.candidates if c.weight is not None]
        if given:
            raise RecipeError(f"uniform takes no weights, but {given[0]} has one (use method: linear)")
        return [1.0] * len(self.recipe.candidates)
