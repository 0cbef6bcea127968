"""The samplers of the weight search and the seeding policy every asker shares.

`make_sampler` builds the paper's grid (its points are enqueued; the sampler only fills what is
asked), TPE, CMA-ES or NSGA-II for a search space, or the learned soup's (its points come from a
gradient path, see optimizer.learned, and are enqueued too); `seed_for` derives each ask's seed from
the recipe's seed and the study's size, so a sampler made afresh in any process asks the same next
point of the same study.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from optimizer.learned import LearnedSettings
from optimizer.space import SearchSpace, grid_points
from soce.errors import SearchError

if TYPE_CHECKING:
    import optuna

SamplerName = Literal["grid", "tpe", "cmaes", "nsga2", "learned"]
SAMPLERS: tuple[str, ...] = ("grid", "tpe", "cmaes", "nsga2", "learned")


@dataclass(frozen=True)
class SearchConfig:
    sampler: SamplerName = "tpe"
    n_trials: int | None = None  # None: every grid point for `grid`, learned.points for `learned`, else 40
    seed: int = 0
    parallel: int = 1
    pruning: bool = False
    category_weights: Mapping[str, float] = field(default_factory=dict)
    learned: LearnedSettings = field(default_factory=LearnedSettings)

    def trials_for(self, space: SearchSpace) -> int:
        if self.n_trials is not None:
            return self.n_trials
        if self.sampler == "learned":
            return self.learned.points
        return len(grid_points(space.k)) if self.sampler == "grid" else 40


def make_sampler(config: SearchConfig, space: SearchSpace) -> optuna.samplers.BaseSampler:
    import optuna

    name = config.sampler
    if name == "grid":
        if space.name != "simplex":
            raise SearchError(
                "the grid sampler searches one simplex of weights; use tpe, cmaes or nsga2 for layerwise"
            )
        # the points themselves are enqueued (see WeightSearch._seed_points); this only fills what is asked
        return optuna.samplers.RandomSampler(seed=config.seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=config.seed, multivariate=True, n_startup_trials=max(4, space.dimension + 1)
        )
    if name == "cmaes":
        if space.dimension < 2:
            raise SearchError(
                f"cmaes needs at least 2 search dimensions; {space.k} experts on a {space.name} space give "
                f"{space.dimension} (use tpe or grid)"
            )
        # starts at the centre of the cube, close to uniform weights; the uniform point is enqueued first
        return optuna.samplers.CmaEsSampler(seed=config.seed, n_startup_trials=0)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(
            seed=config.seed, population_size=max(8, 2 * space.dimension + 4)
        )
    if name == "learned":
        # the points of the gradient path are enqueued (see WeightSearch._enqueue_learned); this only
        # fills an ask that finds none waiting
        return optuna.samplers.RandomSampler(seed=config.seed)
    raise SearchError(f"unknown sampler {name!r}; available: {', '.join(SAMPLERS)}")


def seed_for(seed: int, n_trials: int) -> int:
    digest = hashlib.sha256(f"{seed}:{n_trials}".encode()).digest()
    return int.from_bytes(digest[:4], "big")
