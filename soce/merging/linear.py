"""Linear soup: theta = sum_i w_i * theta_i (Wortsman et al. 2022; the soup SoCE writes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from soce.errors import RecipeError
from soce.merging._base import MergeContext, MergeMethod, MethodParams, coefficients, weighted_sum
from soce.schemas.merge import MergeRecipe


class LinearParams(MethodParams):
    normalize: bool = True
    allow_negative_weights: bool = False


class Linear(MergeMethod):
    name = "linear"
    summary = "weighted average of the candidates; weights normalised to sum to 1 unless normalize: false"
    Params = LinearParams

    def __init__(self, recipe: MergeRecipe, context: MergeContext) -> None:
        super().__init__(recipe, context)
        weights = self._weights()
        self.raw_weights = [float(w) for w in weights]
        self.coeffs = coefficients(
            weights,
            labels=context.labels,
            normalize=self.params.normalize,
            allow_negative=self.params.allow_negative_weights,
        )

    def _weights(self) -> list[float | None]:
        weights = [c.weight for c in self.recipe.candidates]
        if any(w is None for w in weights):
            missing = [c.path for c in self.recipe.candidates if c.weight is None]
            raise RecipeError(
                f"linear needs a weight for every candidate; missing for {', '.join(missing)} "
                "(use method: uniform for equal weights)"
            )
        return weights

    def coefficients_for(self, name: str) -> np.ndarray:
        """The float32 coefficient of each candidate for tensor `name`."""
        return self.coeffs

    def merge(self, name: str, tensors: list[np.ndarray], base: np.ndarray | None, out: np.ndarray) -> None:
        weighted_sum(tensors, self.coefficients_for(name), out)

    def ingredient_weights(self) -> dict[str, float]:
        return {label: float(c) for label, c in zip(self.context.labels, self.coeffs, strict=True)}

    def mergekit_config(self, models: Sequence[str], base: str | None, dtype: str) -> dict[str, Any]:
        return {
            "merge_method": "linear",
            "models": [
                {"model": m, "parameters": {"weight": w}}
                for m, w in zip(models, self.raw_weights, strict=True)
            ],
            "parameters": {"normalize": self.params.normalize},
            "dtype": "float32",  # mergekit then computes in float32, as we do
            "out_dtype": dtype,
        }
