"""TIES merging (Yadav et al. 2023): trim each task vector to its largest entries, elect signs, average."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from soce.merging._base import MergeContext
from soce.merging.task_arithmetic import TaskArithmetic, TaskVectorParams, sign_consensus
from soce.schemas.merge import MergeRecipe


class TiesParams(TaskVectorParams):
    normalize: bool = True
    density: float = Field(1.0, gt=0, le=1, description="fraction of each task vector kept, by magnitude")


def keep_largest(delta: np.ndarray, density: float) -> np.ndarray:
    """Zero all but the max(1, int(density * n)) largest-magnitude entries, in place."""
    if density >= 1 or delta.size == 0:
        return delta
    flat = delta.reshape(-1)
    k = max(1, int(density * flat.size))
    drop = np.argpartition(np.abs(flat), flat.size - k)[: flat.size - k]
    flat[drop] = 0
    return delta


class Ties(TaskArithmetic):
    name = "ties"
    summary = "task vectors trimmed to their largest entries (density), sign election, disjoint mean"
    Params = TiesParams
    elementwise = False  # trimming ranks entries across the whole tensor
    mergekit_name = "ties"

    def __init__(self, recipe: MergeRecipe, context: MergeContext) -> None:
        super().__init__(recipe, context)
        self.densities = [self.params.density if c.density is None else c.density for c in recipe.candidates]

    def merge(self, name: str, tensors: list[np.ndarray], base: np.ndarray | None, out: np.ndarray) -> None:
        assert base is not None
        deltas = []
        for t, density, w in zip(tensors, self.densities, self.weights, strict=True):
            t -= base
            keep_largest(t, density)
            t *= w
            deltas.append(t)
        mixed, divisor = sign_consensus(deltas, self.weights, self.params.normalize)
        self._finish(mixed, divisor, base, out)

    def _mergekit_parameters(self, i: int) -> dict[str, Any]:
        return {"weight": self.raw_weights[i], "density": self.densities[i]}
