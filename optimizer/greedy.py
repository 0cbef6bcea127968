"""Greedy soup (Wortsman et al. 2022): add candidates in order of dev score while dev does not drop.

Candidates are sorted by their own dev objective; each is added to the running uniform average if
the soup's dev objective does not drop (the SoCE paper's recipe, `strict=False`) or only if it rises
(the model-soups reference code, `strict=True`). Evaluation arrives as a callable on a member list.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class GreedyStep:
    candidate: str
    objective: float  # dev objective of the soup with this candidate added
    kept: bool


@dataclass(frozen=True)
class GreedySoup:
    members: list[str]
    objective: float
    steps: list[GreedyStep]
    evaluations: int


def greedy_soup(
    ranking: Mapping[str, float],
    evaluate: Callable[[Sequence[str]], float],
    *,
    strict: bool = False,
    first_objective: float | None = None,
) -> GreedySoup:
    """The greedy soup of the candidates in `ranking` (candidate -> its own dev objective).

    `evaluate(members)` is the dev objective of the uniform soup of `members`. The first member's
    objective is its own score (`first_objective`, default its ranking score) and is not evaluated.
    """
    if not ranking:
        raise ValueError("a greedy soup needs at least one candidate")
    order = sorted(ranking, key=lambda c: -ranking[c])  # stable: ties keep the given order
    members = [order[0]]
    best = ranking[order[0]] if first_objective is None else first_objective
    steps = [GreedyStep(order[0], best, True)]
    evaluations = 0
    for cand in order[1:]:
        value = evaluate([*members, cand])
        evaluations += 1
        keep = value > best if strict else value >= best
        steps.append(GreedyStep(cand, value, keep))
        if keep:
            members.append(cand)
            best = value
    return GreedySoup(members, best, steps, evaluations)
