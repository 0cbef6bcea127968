"""Search spaces: the paper's grid, the stick-breaking simplex, layer groups."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optimizer.space import SearchSpace, grid_points, inverse_stick_breaking, stick_breaking


@pytest.mark.parametrize(("k", "paper", "extra"), [(2, 9, 0), (3, 36, 1), (4, 84, 1), (5, 126, 0)])
def test_grid_has_the_papers_count_plus_uniform(k, paper, extra):
    points = grid_points(k)
    # 0.1..0.9 step 0.1 summing to 1, then the uniform point unless the grid already holds it
    assert len(points) == paper + extra
    for p in points[: len(points) - extra]:
        assert math.isclose(sum(p), 1.0) and all(0.1 - 1e-9 <= w <= 0.9 + 1e-9 for w in p)
        assert all(math.isclose(w * 10, round(w * 10)) for w in p)
    assert any(p == pytest.approx([1 / k] * k) for p in points)
    assert len(set(points)) == len(points)


def test_grid_of_one_expert_is_one_point():
    assert grid_points(1) == [(1.0,)]


def test_stick_breaking_is_a_bijection_onto_the_simplex():
    rng = np.random.default_rng(0)
    for k in (2, 3, 4, 6):
        for _ in range(50):
            u = rng.random(k - 1)
            w = stick_breaking(u)
            assert len(w) == k and min(w) >= 0 and math.isclose(sum(w), 1.0)
            assert inverse_stick_breaking(w) == pytest.approx(list(u), abs=1e-9)
    assert stick_breaking(inverse_stick_breaking([0.25, 0.25, 0.25, 0.25])) == pytest.approx([0.25] * 4)


def test_uniform_cube_gives_uniform_simplex():
    rng = np.random.default_rng(1)
    w = np.array([stick_breaking(rng.random(2)) for _ in range(20000)])
    # under the uniform distribution on the 3-simplex each weight has mean 1/3 and P(w_i > 1/2) = 1/4
    assert w.mean(axis=0) == pytest.approx([1 / 3] * 3, abs=0.01)
    assert (w > 0.5).mean(axis=0) == pytest.approx([0.25] * 3, abs=0.015)


class FixedTrial:
    def __init__(self, values):
        self.values = values
        self.asked = []

    def suggest_float(self, name, low, high):
        self.asked.append(name)
        return self.values[name]


def test_layerwise_space_asks_one_simplex_per_group():
    space = SearchSpace(("a", "b", "c"), "layerwise", ("embed", "blocks[0]", "blocks[1]", "head"))
    assert space.dimension == 8
    params = {n: 0.5 for g in space.groups for n in space.param_names(g)}
    trial = FixedTrial(params)
    w = space.suggest(trial)
    assert len(trial.asked) == 8 and set(w.groups) == set(space.groups)
    assert space.from_params(params) == w
    assert sum(w.weights) == pytest.approx(1.0)
    assert w.as_dict()["layer_weights"]["head"] == dict(zip("abc", w.groups["head"], strict=True))


def test_params_for_gives_back_the_weights():
    space = SearchSpace(("a", "b", "c", "d"))
    w = space.from_params(space.params_for([0.1, 0.2, 0.3, 0.4]))
    assert w.weights == pytest.approx((0.1, 0.2, 0.3, 0.4))
