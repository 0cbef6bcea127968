"""DARE (Yu et al. 2024): drop task-vector entries at random, rescale the rest, then add (or TIES)."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
from pydantic import Field

from soce.merging._base import MergeContext
from soce.merging.task_arithmetic import TaskArithmetic, TaskVectorParams, sign_consensus
from soce.schemas.merge import MergeRecipe


class DareParams(TaskVectorParams):
    density: float = Field(1.0, gt=0, le=1, description="probability that a task-vector entry is kept")
    rescale: bool = Field(True, description="divide kept entries by density, as in the paper")
    sign_consensus: bool = Field(
        False, description="TIES sign election after dropping (mergekit's dare_ties)"
    )
    seed: int = Field(0, description="drop masks depend on seed, tensor name and candidate index only")


class Dare(TaskArithmetic):
    name = "dare"
    summary = "task vectors with entries dropped at random (1 - density) and rescaled; seeded"
    Params = DareParams
    elementwise = False  # masks are drawn per whole tensor so chunking cannot change them

    def __init__(self, recipe: MergeRecipe, context: MergeContext) -> None:
        super().__init__(recipe, context)
        self.densities = [self.params.density if c.density is None else c.density for c in recipe.candidates]
        self.mergekit_name = "dare_ties" if self.params.sign_consensus else "dare_linear"

    def drop_mask(self, name: str, index: int, size: int) -> np.ndarray:
        """Which entries of candidate `index`'s task vector for tensor `name` are kept."""
        rng = np.random.default_rng([self.params.seed, zlib.crc32(name.encode()), index])
        return rng.random(size, dtype=np.float32) < self.densities[index]

    def merge(self, name: str, tensors: list[np.ndarray], base: np.ndarray | None, out: np.ndarray) -> None:
        assert base is not None
        deltas = []
        for i, t in enumerate(tensors):
            t -= base
            density = self.densities[i]
            if density < 1:
                t[~self.drop_mask(name, i, t.size).reshape(t.shape)] = 0
                if self.params.rescale:
                    t /= np.float32(density)
            t *= self.weights[i]
            deltas.append(t)
        if self.params.sign_consensus:
            mixed, divisor = sign_consensus(deltas, self.weights, self.params.normalize)
        else:
            mixed = np.add.reduce(deltas) if len(deltas) > 1 else deltas[0]
            total = float(self.weights.sum())
            divisor = total if abs(total) >= 1e-8 else 1.0
        self._finish(mixed, divisor, base, out)

    def _mergekit_parameters(self, i: int) -> dict[str, Any]:
        return {"weight": self.raw_weights[i], "density": self.densities[i]}

    def _mergekit_shared(self) -> dict[str, Any]:
        # mergekit's rescale matches the L1 norm rather than dividing by density
        return {**super()._mergekit_shared(), "rescale": self.params.rescale}

    mergekit_note = (
        "DARE draws random drop masks: mergekit uses torch's generator (seed with --random-seed) and "
        "rescales kept entries to the task vector's L1 norm, SoCE uses numpy seeded per tensor and divides "
        "by density, so this replay matches the method and parameters, not the exact bits."
    )
