"""Greedy soup on a worked example, and the paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.bootstrap import paired_bootstrap
from optimizer.greedy import greedy_soup

# dev objective of the uniform soup of each member set (the worked example)
SOUPS = {
    ("a", "b"): 0.72,  # a alone is 0.70: b helps
    ("a", "b", "c"): 0.71,  # c hurts: dropped
    ("a", "b", "d"): 0.72,  # d neither helps nor hurts: kept by the paper's rule, not the strict one
    ("a", "b", "d", "e"): 0.75,
    ("a", "b", "e"): 0.74,
}
RANKING = {"c": 0.66, "a": 0.70, "e": 0.60, "b": 0.68, "d": 0.64}


def test_greedy_soup_worked_example():
    calls = []

    def evaluate(members):
        calls.append(tuple(members))
        return SOUPS[tuple(members)]

    g = greedy_soup(RANKING, evaluate)
    assert calls == [("a", "b"), ("a", "b", "c"), ("a", "b", "d"), ("a", "b", "d", "e")]
    assert g.members == ["a", "b", "d", "e"] and g.objective == 0.75 and g.evaluations == 4
    assert [s.kept for s in g.steps] == [True, True, False, True, True]
    strict = greedy_soup(RANKING, lambda m: SOUPS[tuple(m)], strict=True)
    assert strict.members == ["a", "b", "e"] and strict.objective == 0.74


def test_greedy_of_one_candidate_evaluates_nothing():
    g = greedy_soup({"a": 0.5}, lambda m: pytest.fail("no evaluation needed"))
    assert g.members == ["a"] and g.evaluations == 0


STRUCTURE = [(1.0, [("t1", 1.0), ("t2", 1.0)]), (1.0, [("t3", 1.0)])]


def test_bootstrap_of_identical_models_is_zero():
    rng = np.random.default_rng(0)
    a = {t: rng.integers(0, 2, 50).astype(float) for t in ("t1", "t2", "t3")}
    iv = paired_bootstrap(a, a, STRUCTURE, iterations=500)
    assert iv.diff == iv.low == iv.high == 0.0


def test_bootstrap_interval_covers_a_real_gain_and_excludes_zero():
    rng = np.random.default_rng(1)
    b = {t: rng.integers(0, 2, 400).astype(float) for t in ("t1", "t2", "t3")}
    a = {t: np.where(rng.random(400) < 0.3, 1.0, v) for t, v in b.items()}  # a fixes ~30% of b's misses
    iv = paired_bootstrap(a, b, STRUCTURE, iterations=2000, seed=3)
    observed = (
        0.5 * (0.5 * (a["t1"] - b["t1"]).mean() + 0.5 * (a["t2"] - b["t2"]).mean())
        + 0.5 * (a["t3"] - b["t3"]).mean()
    )
    assert iv.diff == pytest.approx(observed)
    assert 0 < iv.low < iv.diff < iv.high < 0.3
    # paired: the interval is much narrower than the unpaired spread of two 0/1 samples would allow
    assert iv.high - iv.low < 0.1


def test_bootstrap_refuses_mismatched_examples():
    with pytest.raises(ValueError, match="t1"):
        paired_bootstrap({"t1": [1, 0]}, {"t1": [1]}, [(1.0, [("t1", 1.0)])])
