"""Correlation analysis of the dev score matrix: which categories are weakly correlated.

Correlations are taken between categories across candidates (each candidate is one observation).
A category k is weakly correlated when rho(k, l) < tau for some other category l. The paper writes
|rho| < tau, which would drop strongly anti-correlated pairs, the clearest case of categories that
different candidates are good at; `absolute=True` gives that reading, the default is rho < tau.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Method = Literal["pearson", "spearman"]
MIN_CANDIDATES = 4  # below this, correlations between categories mean little


@dataclass(frozen=True)
class Correlation:
    """Both matrices (None where undefined), the threshold, and what it selected, with reasons."""

    categories: list[str]
    pearson: list[list[float | None]]
    spearman: list[list[float | None]]
    method: Method
    tau: float
    absolute: bool
    weak: list[str]
    constant: list[str]
    explanation: str
    warnings: list[str] = field(default_factory=list)

    def matrix(self, method: Method | None = None) -> list[list[float | None]]:
        return self.pearson if (method or self.method) == "pearson" else self.spearman

    def as_dict(self) -> dict:
        def named(m: list[list[float | None]]) -> dict[str, dict[str, float | None]]:
            return {
                a: dict(zip(self.categories, row, strict=True))
                for a, row in zip(self.categories, m, strict=True)
            }

        return {
            "method": self.method,
            "pearson": named(self.pearson),
            "spearman": named(self.spearman),
            "tau": self.tau,
            "absolute": self.absolute,
            "weak_categories": list(self.weak),
            "constant_categories": list(self.constant),
            "explanation": self.explanation,
            "warnings": list(self.warnings),
        }


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as Spearman's rho needs)."""
    order = np.argsort(values, kind="mergesort")
    r = np.empty(len(values), dtype=np.float64)
    sorted_vals = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        r[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return r


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson's r, or None with fewer than 3 points or a constant side (r is undefined)."""
    if len(x) < 3:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    sx, sy = math.sqrt(float(dx @ dx)), math.sqrt(float(dy @ dy))
    if sx <= 1e-12 * max(1.0, float(np.abs(x).max())) or sy <= 1e-12 * max(1.0, float(np.abs(y).max())):
        return None
    return float(np.clip((dx @ dy) / (sx * sy), -1.0, 1.0))


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 3:
        return None
    return pearson(ranks(x), ranks(y))


def _pairwise(values: np.ndarray, fn) -> list[list[float | None]]:
    k = values.shape[1]
    out: list[list[float | None]] = [[None] * k for _ in range(k)]
    for a in range(k):
        for b in range(k):
            ok = ~np.isnan(values[:, a]) & ~np.isnan(values[:, b])
            if a == b:
                out[a][b] = 1.0 if ok.sum() >= 3 and fn(values[ok, a], values[ok, a]) is not None else None
            elif b > a:
                out[a][b] = out[b][a] = fn(values[ok, a], values[ok, b])
    return out


def analyse_correlation(
    candidates: Sequence[str],
    categories: Sequence[str],
    values: Sequence[Sequence[float | None]],
    *,
    tau: float = 0.5,
    method: Method = "pearson",
    absolute: bool = False,
) -> Correlation:
    """Both correlation matrices of a candidates x categories matrix (None = missing score)."""
    m = np.array([[np.nan if v is None else float(v) for v in row] for row in values], dtype=np.float64)
    if m.shape != (len(candidates), len(categories)):
        raise ValueError(f"score matrix is {m.shape}, expected {len(candidates)} x {len(categories)}")
    p, s = _pairwise(m, pearson), _pairwise(m, spearman)
    chosen = p if method == "pearson" else s
    warnings: list[str] = []
    if len(candidates) < MIN_CANDIDATES:
        warnings.append(
            f"only {len(candidates)} candidate(s): correlations between categories across fewer than "
            f"{MIN_CANDIDATES} candidates mean little; experts are still chosen per category"
        )
    constant = []
    for j, cat in enumerate(categories):
        col = m[:, j][~np.isnan(m[:, j])]
        if len(col) and float(col.max() - col.min()) <= 1e-12:
            constant.append(cat)
            warnings.append(f"category {cat!r} has the same score for every candidate: it has no expert")
        missing = int(np.isnan(m[:, j]).sum())
        if missing:
            warnings.append(
                f"category {cat!r} has no score for {missing} candidate(s); "
                "they are left out of its correlations"
            )
    weak = []
    reasons = []
    for a, cat in enumerate(categories):
        if cat in constant:
            continue
        partners = [
            (categories[b], chosen[a][b])
            for b in range(len(categories))
            if b != a
            and chosen[a][b] is not None
            and ((abs(chosen[a][b]) if absolute else chosen[a][b]) < tau)  # type: ignore[arg-type]
        ]
        if partners:
            weak.append(cat)
            low = min(partners, key=lambda x: x[1])  # type: ignore[arg-type,return-value]
            reasons.append(f"{cat} (rho={low[1]:+.2f} with {low[0]})")
    rule = f"|rho| < {tau:g}" if absolute else f"rho < {tau:g}"
    if weak:
        explanation = (
            f"{method.capitalize()} correlation across {len(candidates)} candidates; a category is weakly "
            f"correlated when {rule} with some other category: " + ", ".join(reasons) + "."
        )
    else:
        explanation = (
            f"{method.capitalize()} correlation across {len(candidates)} candidates: no pair of "
            f"categories has "
            f"{rule}, so no category is weakly correlated."
        )
    return Correlation(
        categories=list(categories),
        pearson=p,
        spearman=s,
        method=method,
        tau=tau,
        absolute=absolute,
        weak=weak,
        constant=constant,
        explanation=explanation,
        warnings=warnings,
    )
