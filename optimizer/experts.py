"""Category experts: for each weakly correlated category, the candidate best at it on dev.

Ties go to the better dev average, then to the earlier candidate; a candidate that is expert in
several categories appears once. With fewer than two distinct experts the soup falls back to the
top candidates by dev average, and says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class ExpertChoice:
    """Why `candidate` is in the soup: best in `category` by `margin` over `runner_up`."""

    category: str | None
    candidate: str
    score: float | None
    runner_up: str | None
    runner_up_score: float | None
    margin: float | None
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Experts:
    choices: list[ExpertChoice]
    candidates: list[str]  # distinct, in order of first choice
    fallback: bool
    warnings: list[str]


def _ok(v: float | None) -> bool:
    return v is not None and not math.isnan(v)


def choose_experts(
    candidates: Sequence[str],
    categories: Sequence[str],
    values: Sequence[Sequence[float | None]],
    averages: Sequence[float | None],
    weak: Sequence[str],
    *,
    fallback_size: int = 3,
    max_experts: int | None = None,
) -> Experts:
    """The expert of each category in `weak` (dev scores only), merged; a fallback when < 2."""
    col = {c: j for j, c in enumerate(categories)}
    order = {c: i for i, c in enumerate(candidates)}
    avg = {c: (a if _ok(a) else -math.inf) for c, a in zip(candidates, averages, strict=True)}
    choices: list[ExpertChoice] = []
    warnings: list[str] = []
    for cat in weak:
        j = col[cat]
        scored = [(values[i][j], c) for i, c in enumerate(candidates) if _ok(values[i][j])]
        if not scored:
            warnings.append(f"category {cat!r} has no dev scores; it has no expert")
            continue
        scored.sort(key=lambda t: (-t[0], -avg[t[1]], order[t[1]]))  # type: ignore[operator]
        best_score, best = scored[0]
        if len(scored) > 1:
            second_score, second = scored[1]
            margin = float(best_score - second_score)  # type: ignore[operator]
            if margin == 0:
                reason = (
                    f"tied best in {cat} at {best_score:.4f} with {second}; chosen for its higher dev average"
                    if avg[best] > avg[second]
                    else f"tied best in {cat} at {best_score:.4f} with {second}; chosen as listed first"
                )
            else:
                reason = (
                    f"best in {cat} at {best_score:.4f}, {margin:+.4f} ahead of {second} ({second_score:.4f})"
                )
        else:
            second, second_score, margin = None, None, None
            reason = f"the only candidate scored in {cat} ({best_score:.4f})"
        choices.append(
            ExpertChoice(cat, best, float(best_score), second, second_score, margin, reason)  # type: ignore[arg-type]
        )
    distinct: list[str] = []
    for ch in choices:
        if ch.candidate not in distinct:
            distinct.append(ch.candidate)
    if max_experts is not None and len(distinct) > max_experts:
        keep = sorted(distinct, key=lambda c: (-avg[c], order[c]))[:max_experts]
        dropped = [c for c in distinct if c not in keep]
        warnings.append(
            f"{len(distinct)} experts, more than max_experts={max_experts}: kept the best by dev average, "
            f"dropped {', '.join(dropped)}"
        )
        distinct = [c for c in distinct if c in keep]
    if len(distinct) >= 2:
        return Experts(choices, distinct, False, warnings)
    ranked = sorted(candidates, key=lambda c: (-avg[c], order[c]))
    top = ranked[: max(2, min(fallback_size, len(ranked)))]
    warnings.append(
        f"{len(distinct)} distinct expert(s) from the weakly correlated categories; the soup falls back to "
        f"the top {len(top)} candidates by dev average"
    )
    fallback = [
        ExpertChoice(
            None, c, avg[c] if avg[c] != -math.inf else None, None, None, None, f"#{k + 1} by dev average"
        )
        for k, c in enumerate(top)
    ]
    return Experts(choices + fallback, top, True, warnings)


def best_single(candidates: Sequence[str], averages: Sequence[float | None]) -> str:
    """The candidate with the best dev average (ties: the one listed first)."""
    order = {c: i for i, c in enumerate(candidates)}
    avg = {c: (a if _ok(a) else -math.inf) for c, a in zip(candidates, averages, strict=True)}
    return min(candidates, key=lambda c: (-avg[c], order[c]))


def ingredient_pool(
    experts: Experts,
    candidates: Sequence[str],
    averages: Sequence[float | None],
    *,
    include_best_single: bool = True,
) -> Experts:
    """The soup's ingredients: the experts plus the best single candidate by dev average.

    With the best single candidate among the ingredients, the searched space contains it (weight 1
    on it), so a search can only find soups that are at least as good on dev; its absence is the
    paper's experts-only pool. Each ingredient's reason is among the returned choices.
    """
    if not include_best_single:
        return experts
    best = best_single(candidates, averages)
    score = dict(zip(candidates, averages, strict=True))[best]
    shown = f"{score:.4f}" if _ok(score) else "none"
    if best in experts.candidates:
        reason = f"also the best single candidate by dev average ({shown})"
        return replace(
            experts, choices=[*experts.choices, ExpertChoice(None, best, score, None, None, None, reason)]
        )
    reason = (
        f"the best single candidate by dev average ({shown}), expert in no weakly correlated category: "
        "an ingredient so that the searched weights contain it"
    )
    choice = ExpertChoice(None, best, score, None, None, None, reason)
    return replace(experts, choices=[*experts.choices, choice], candidates=[*experts.candidates, best])
