"""Task arithmetic (Ilharco et al. 2023): base + lambda * sum_i w_i (theta_i - base)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field

from soce.merging._base import MergeContext, MergeMethod, MethodParams, coefficients
from soce.schemas.merge import MergeRecipe


class TaskVectorParams(MethodParams):
    normalize: bool = Field(False, description="divide the summed task vectors by the sum of weights")
    lambda_: float = Field(1.0, alias="lambda", description="scale of the merged task vector")
    allow_negative_weights: bool = False


class TaskArithmetic(MergeMethod):
    name = "task_arithmetic"
    summary = "base + lambda * sum of weighted task vectors (candidate - base); weights default to 1"
    Params = TaskVectorParams
    needs_base = True
    min_candidates = 1
    mergekit_name = "task_arithmetic"

    def __init__(self, recipe: MergeRecipe, context: MergeContext) -> None:
        super().__init__(recipe, context)
        self.raw_weights = [1.0 if c.weight is None else c.weight for c in recipe.candidates]
        # never normalised here: mergekit divides the merged delta, not the weights
        self.weights = coefficients(
            self.raw_weights,
            labels=context.labels,
            normalize=False,
            allow_negative=self.params.allow_negative_weights,
        )

    def _finish(
        self, mixed: np.ndarray, divisor: np.ndarray | float, base: np.ndarray, out: np.ndarray
    ) -> None:
        if self.params.normalize:
            np.divide(mixed, divisor, out=mixed)
        if self.params.lambda_ != 1:
            mixed *= np.float32(self.params.lambda_)
        np.add(base, mixed, out=out)

    def merge(self, name: str, tensors: list[np.ndarray], base: np.ndarray | None, out: np.ndarray) -> None:
        assert base is not None
        mixed = tensors[0]
        for i, t in enumerate(tensors):
            t -= base
            t *= self.weights[i]
            if i:
                mixed += t
        divisor = float(self.weights.sum())
        self._finish(mixed, divisor if abs(divisor) >= 1e-8 else 1.0, base, out)

    def ingredient_weights(self) -> dict[str, float]:
        return {label: float(w) for label, w in zip(self.context.labels, self.weights, strict=True)}

    def _mergekit_parameters(self, i: int) -> dict[str, Any]:
        return {"weight": self.raw_weights[i]}

    def _mergekit_shared(self) -> dict[str, Any]:
        return {"normalize": self.params.normalize, "lambda": self.params.lambda_}

    def mergekit_config(self, models: Sequence[str], base: str | None, dtype: str) -> dict[str, Any]:
        return {
            "merge_method": self.mergekit_name,
            "base_model": base,
            "models": [
                {"model": m, "parameters": self._mergekit_parameters(i)} for i, m in enumerate(models)
            ],
            "parameters": self._mergekit_shared(),
            "dtype": "float32",
            "out_dtype": dtype,
        }


def sign_consensus(
    deltas: list[np.ndarray], weights: np.ndarray, normalize: bool
) -> tuple[np.ndarray, np.ndarray]:
    """TIES sign election over weighted deltas: keep entries agreeing with the sign of their sum.

    Returns (summed agreeing deltas, summed weights of agreeing entries with 0 replaced by 1).
    """
    total = np.add.reduce(deltas) if len(deltas) > 1 else deltas[0].copy()
    majority = np.where(total >= 0, np.float32(1), np.float32(-1))
    mixed = np.zeros_like(total)
    divisor = np.zeros_like(total)
    for d, w in zip(deltas, weights, strict=True):
        agree = np.sign(d) == majority
        mixed += np.where(agree, d, np.float32(0))
        if normalize:
            divisor += np.where(agree, w, np.float32(0))
    divisor[divisor == 0] = 1
    return mixed, divisor
