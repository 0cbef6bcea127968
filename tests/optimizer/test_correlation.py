"""Correlation analysis and expert choice on hand-built dev score matrices."""

from __future__ import annotations

import math

import pytest

from optimizer.correlation import analyse_correlation, ranks, spearman
from optimizer.experts import choose_experts

CANDS = ["a", "b", "c", "d", "e"]


def test_anti_correlated_categories_are_weak_and_each_gets_its_expert():
    # math rises as code falls across candidates: rho = -1; reading tracks math exactly: rho = +1
    values = [[0.9, 0.1, 0.9], [0.7, 0.3, 0.7], [0.5, 0.5, 0.5], [0.3, 0.7, 0.3], [0.1, 0.9, 0.1]]
    corr = analyse_correlation(CANDS, ["math", "code", "reading"], values, tau=0.5)
    p = corr.pearson
    assert p[0][1] == pytest.approx(-1.0) and p[0][2] == pytest.approx(1.0) and p[1][1] == 1.0
    assert corr.weak == ["math", "code", "reading"]  # each has rho = -1 with another category
    assert "rho=-1.00" in corr.explanation and not corr.warnings
    # the paper's |rho| < tau reading drops this perfectly anti-correlated pair
    assert analyse_correlation(CANDS, ["math", "code", "reading"], values, tau=0.5, absolute=True).weak == []
    averages = [sum(r) / 3 for r in values]
    experts = choose_experts(CANDS, ["math", "code", "reading"], values, averages, corr.weak)
    chosen = [(c.category, c.candidate) for c in experts.choices]
    assert chosen == [("math", "a"), ("code", "e"), ("reading", "a")]
    assert experts.candidates == ["a", "e"] and not experts.fallback  # duplicates merged
    math_choice = experts.choices[0]
    assert math_choice.runner_up == "b" and math_choice.margin == pytest.approx(0.2)
    assert "ahead of b" in math_choice.reason


def test_strongly_correlated_categories_fall_back_to_top_candidates():
    values = [[0.9, 0.8], [0.7, 0.6], [0.5, 0.4], [0.3, 0.2]]
    corr = analyse_correlation(CANDS[:4], ["x", "y"], values, tau=0.5)
    assert corr.weak == [] and "no category is weakly correlated" in corr.explanation
    experts = choose_experts(CANDS[:4], ["x", "y"], values, [0.85, 0.65, 0.45, 0.25], corr.weak)
    assert experts.fallback and experts.candidates == ["a", "b", "c"]
    assert any("falls back" in w for w in experts.warnings)


def test_constant_category_has_no_correlation_and_no_expert():
    values = [[0.5, 0.1, 0.9], [0.5, 0.9, 0.1], [0.5, 0.4, 0.6], [0.5, 0.6, 0.4]]
    corr = analyse_correlation(CANDS[:4], ["flat", "x", "y"], values, tau=0.3)
    assert corr.pearson[0][1] is None and corr.pearson[0][0] is None and corr.spearman[0][2] is None
    assert corr.constant == ["flat"] and "flat" not in corr.weak
    assert any("same score for every candidate" in w for w in corr.warnings)
    assert corr.weak == ["x", "y"]


def test_ties_are_broken_by_dev_average_then_order():
    values = [[0.8, 0.2], [0.8, 0.6], [0.1, 0.9], [0.3, 0.3]]
    experts = choose_experts(CANDS[:4], ["x", "y"], values, [0.5, 0.7, 0.5, 0.3], ["x"])
    assert experts.choices[0].candidate == "b" and experts.choices[0].margin == 0
    assert "higher dev average" in experts.choices[0].reason
    same_avg = choose_experts(CANDS[:4], ["x", "y"], values, [0.5, 0.5, 0.5, 0.3], ["x"])
    assert same_avg.choices[0].candidate == "a" and "listed first" in same_avg.choices[0].reason


def test_missing_scores_are_left_out_pairwise():
    values = [[0.9, 0.1], [0.7, None], [0.5, 0.5], [0.3, 0.7], [0.1, 0.9]]
    corr = analyse_correlation(CANDS, ["x", "y"], values, tau=0.0)
    assert corr.pearson[0][1] == pytest.approx(-1.0)  # the four complete rows are perfectly anti-correlated
    assert any("no score for 1 candidate" in w for w in corr.warnings)
    experts = choose_experts(CANDS, ["x", "y"], values, [0.5, 0.7, 0.5, 0.5, 0.5], corr.weak)
    assert [c.candidate for c in experts.choices] == ["a", "e"]


def test_few_candidates_warn():
    corr = analyse_correlation(["a", "b", "c"], ["x", "y"], [[1, 0], [0, 1], [0.5, 0.2]], tau=0.5)
    assert any("only 3 candidate(s)" in w for w in corr.warnings)
    two = analyse_correlation(["a", "b"], ["x", "y"], [[1, 0], [0, 1]], tau=0.5)
    assert two.pearson[0][1] is None and two.weak == []


def test_spearman_uses_average_ranks():
    assert list(ranks(__import__("numpy").array([3.0, 1.0, 3.0, 2.0]))) == [3.5, 1.0, 3.5, 2.0]
    import numpy as np

    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(x, x**3) == pytest.approx(1.0)  # monotone but not linear
    corr = analyse_correlation(CANDS, ["x", "y"], [[v, v**3] for v in x], tau=0.99, method="spearman")
    assert corr.spearman[0][1] == pytest.approx(1.0) and corr.pearson[0][1] < 1.0
    assert corr.weak == [] and not math.isnan(corr.pearson[0][1])
