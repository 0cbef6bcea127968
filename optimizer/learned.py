"""The learned soup's pure parts: its settings, the simplex mapping, early stopping and the path it took.

The learned soup (Wortsman et al. 2022, section "learned soup"; per layer group as in AdaMerging)
optimises mixing logits by gradient ascent on the dev log-likelihood of the reference answers through
the merged model; the weights are softmax(logits), so every step stays on the simplex. The gradient
loop needs torch and the resident model and runs in the workers (workers.learned); this module holds
what it records: the weights after each step (`LearnedPath`), and which of them become the study's
trials (`LearnedPath.checkpoints`), so selection and the verdict treat them as any other trials.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optimizer.space import SoupWeights, mean_weights

LEARNED_PARAM = "learned_point"  # the trial parameter that numbers a learned point (0: uniform start)
LEARNED_ATTR = "learned"  # the study user attribute holding the path (LearnedPath.as_dict)
SIMPLEX = ""  # the one group of a simplex space in a path's weights
# what workers.learned maximises, named in the study's name: a new definition starts a new study
LEARNED_OBJECTIVE = "reference-loglik-per-token/1"


@dataclass(frozen=True)
class LearnedSettings:
    """Adam on the mixing logits, one full pass over the dev documents per step."""

    steps: int = 30
    lr: float = 0.1  # per step a logit moves by about lr: 30 steps can shift a weight ratio by e^3
    patience: int = 5  # steps without a gain of min_delta before stopping
    min_delta: float = 1e-4  # in mean log-probability per answer token
    decay: float = 0.5  # the learning rate's factor after each step without a gain (Adam overshoots)
    batch_size: int = 32  # documents per forward pass (gradients accumulate over the pass)
    points: int = 6  # trials when n_trials is not given: uniform, checkpoints on the way, the final weights


def softmax(logits: Sequence[float]) -> list[float]:
    """Weights on the simplex from unconstrained logits (the learned soup's parametrisation)."""
    top = max(logits)
    e = [math.exp(x - top) for x in logits]
    total = sum(e)
    return [x / total for x in e]


class EarlyStop:
    """Stop after `patience` steps whose value is not `min_delta` above the best one; remembers the best.

    `lr_scale` is decay ** (steps without a gain so far): near the optimum, Adam's steps of about the
    learning rate circle it, and smaller ones settle.
    """

    def __init__(self, patience: int, min_delta: float, decay: float = 1.0) -> None:
        self.patience, self.min_delta, self.decay = patience, min_delta, decay
        self.best: float | None = None
        self.best_step = 0
        self.lr_scale = 1.0
        self._since = 0

    def update(self, step: int, value: float) -> bool:
        """Record the value at `step`; whether to stop."""
        if self.best is None or value > self.best + self.min_delta:
            self.best, self.best_step, self._since = value, step, 0
            return False
        if value > self.best:  # a gain too small to count keeps the patience running, but is the best
            self.best, self.best_step = value, step
        self._since += 1
        self.lr_scale *= self.decay
        return self._since >= self.patience


@dataclass(frozen=True)
class LearnedPath:
    """The weights after each step (step 0: uniform) and the objective there; `best_step` is the result.

    weights[step][group] lists the experts' weights; a simplex space has one group, SIMPLEX.
    """

    experts: tuple[str, ...]
    groups: tuple[str, ...]
    weights: list[dict[str, list[float]]]
    loglik: list[float]  # mean log-probability per answer token over the dev documents, at each step
    best_step: int
    stopped: str  # "steps" (all done) or "no improvement" (early stop)
    seconds: float
    documents: int

    def soup(self, step: int) -> SoupWeights:
        """The weights after `step` as a trial's weights."""
        at = self.weights[step]
        if not self.groups:
            return SoupWeights(self.experts, tuple(at[SIMPLEX]))
        groups = {g: tuple(at[g]) for g in self.groups}
        return SoupWeights(self.experts, mean_weights(groups), groups)

    def checkpoints(self, n: int) -> list[int]:
        """`n` steps of the path, in order: evenly spaced from the uniform start to the best weights, or
        when that is fewer than `n` steps, all of them and then the steps after the best (the best
        again where the whole path is shorter than `n`). One point is the best weights alone."""
        best = self.best_step
        if n <= 1:
            return [best][: max(n, 0)]
        if best + 1 >= n:
            return [round(i * best / (n - 1)) for i in range(n)]
        steps = list(range(min(n, len(self.weights))))
        return steps + [best] * (n - len(steps))

    def as_dict(self) -> dict[str, Any]:
        return {
            "experts": list(self.experts),
            "groups": list(self.groups),
            "weights": self.weights,
            "loglik": self.loglik,
            "best_step": self.best_step,
            "stopped": self.stopped,
            "seconds": self.seconds,
            "documents": self.documents,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LearnedPath:
        return cls(
            experts=tuple(data["experts"]),
            groups=tuple(data["groups"]),
            weights=[{g: [float(x) for x in w] for g, w in step.items()} for step in data["weights"]],
            loglik=[float(x) for x in data["loglik"]],
            best_step=int(data["best_step"]),
            stopped=str(data["stopped"]),
            seconds=float(data["seconds"]),
            documents=int(data["documents"]),
        )

    def summary(self) -> dict[str, Any]:
        """What a report or a job row says about the path: steps, where it stopped, the objective."""
        return {
            "steps": len(self.weights) - 1,
            "best_step": self.best_step,
            "stopped": self.stopped,
            "loglik_uniform": self.loglik[0],
            "loglik_best": self.loglik[self.best_step],
            "documents": self.documents,
            "seconds": self.seconds,
        }
