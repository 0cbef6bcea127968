"""The learned sampler's pure parts and how its gradient path becomes trials of the study (no torch)."""

from __future__ import annotations

import math

import optuna
import pytest

from optimizer.learned import LEARNED_ATTR, LEARNED_PARAM, SIMPLEX, EarlyStop, LearnedPath, softmax
from optimizer.samplers import SearchConfig
from optimizer.search import WeightSearch
from optimizer.space import SearchSpace, SoupWeights
from soce.errors import SearchError

CATS = ["x", "y"]


def fake_path(space: SearchSpace, steps: int = 8) -> LearnedPath:
    """A path from uniform towards the first expert, its objective rising to step `steps - 2`."""
    groups = list(space.groups) if space.name == "layerwise" else [SIMPLEX]
    weights, values = [], []
    for t in range(steps + 1):
        logits = [0.3 * t] + [0.0] * (space.k - 1)
        weights.append({g: softmax([x * (1 + j) for x in logits]) for j, g in enumerate(groups)})
        values.append(-2.0 + 0.1 * min(t, steps - 2) - 0.05 * max(0, t - (steps - 2)))
    return LearnedPath(
        experts=space.experts,
        groups=tuple(space.groups) if space.name == "layerwise" else (),
        weights=weights,
        loglik=values,
        best_step=steps - 2,
        stopped="no improvement",
        seconds=0.5,
        documents=10,
    )


class Learn:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, space: SearchSpace) -> LearnedPath:
        self.calls += 1
        return fake_path(space)


def evaluate(weights: SoupWeights, categories):
    return {c: 0.5 + 0.3 * weights.weights[0] - 0.1 * i for i, c in enumerate(categories)}


def learned_search(*, storage, learn=None, n=None, space=None, name="learned") -> WeightSearch:
    return WeightSearch(
        space or SearchSpace(("a", "b", "c")),
        CATS,
        evaluate,
        SearchConfig(sampler="learned", n_trials=n),
        storage=storage,
        study_name=name,
        learn=learn,
    )


def test_softmax_is_on_the_simplex_and_early_stop_keeps_the_best():
    for logits in ([0.0, 0.0, 0.0], [5.0, -3.0, 1.0], [700.0, 0.0]):
        w = softmax(logits)
        assert min(w) >= 0 and math.isclose(sum(w), 1.0)
    assert softmax([0.0, 0.0, 0.0]) == pytest.approx([1 / 3] * 3)
    stop = EarlyStop(patience=2, min_delta=0.01, decay=0.5)
    assert [stop.update(t, v) for t, v in enumerate([1.0, 1.5, 1.505, 1.4])] == [False, False, False, True]
    assert stop.best == 1.505 and stop.best_step == 2  # a gain below min_delta is the best, not progress
    assert stop.lr_scale == 0.25  # halved after each of the two steps without progress


def test_checkpoints_run_from_uniform_to_the_best_step():
    path = fake_path(SearchSpace(("a", "b", "c")))
    assert path.checkpoints(4) == [0, 2, 4, 6] and path.checkpoints(1) == [6]
    # more points than steps up to the best: every step, those after the best too, then the best again
    assert path.checkpoints(8) == list(range(8)) and path.checkpoints(11) == [*range(9), 6, 6]
    assert path.soup(0).weights == pytest.approx((1 / 3,) * 3)
    assert LearnedPath.from_dict(path.as_dict()) == path
    assert path.summary()["loglik_best"] == path.loglik[6] > path.summary()["loglik_uniform"]


def test_the_path_is_computed_once_and_its_checkpoints_are_the_trials():
    storage = optuna.storages.InMemoryStorage()
    learn = Learn()
    result = learned_search(storage=storage, learn=learn).run()
    path = fake_path(SearchSpace(("a", "b", "c")))
    assert learn.calls == 1 and result.sampler == "learned" and result.n_trials == 6  # the default points
    steps = path.checkpoints(6)
    for rec, step in zip(result.history, steps, strict=True):
        assert rec.weights.weights == pytest.approx(path.soup(step).weights, abs=1e-9)
    study = optuna.load_study(study_name="learned", storage=storage)
    assert study.user_attrs[LEARNED_ATTR] == path.as_dict()
    assert [t.params[LEARNED_PARAM] for t in study.trials] == list(range(6))
    assert [t.user_attrs["learned"]["step"] for t in study.trials] == steps
    # the first point is the uniform soup; the best by dev objective is the one the path ends at
    assert result.history[0].weights.weights == pytest.approx((1 / 3,) * 3)
    assert result.best.number == 5
    # points repeated on a short path are evaluated once
    assert result.evaluations == len(set(steps))

    # continued with more trials: the stored path gives the new points, nothing is learned again
    more = learned_search(storage=storage, n=9)
    result = more.run()
    assert result.n_trials == 9
    assert sorted(t.params[LEARNED_PARAM] for t in more.study.trials) == list(range(9))


def test_a_study_without_its_path_cannot_be_continued_without_learning():
    with pytest.raises(SearchError, match="no learned path"):
        learned_search(storage=optuna.storages.InMemoryStorage()).run()


def test_a_failed_point_is_asked_again_with_its_number():
    storage = optuna.storages.InMemoryStorage()
    search = learned_search(storage=storage, learn=Learn(), n=3)
    search.begin(lambda _: True)
    first, second = search.ask_trials(2)
    search.abandon(second, "worker lost")
    rest = search.ask_trials(2)
    trials = {t.number: t for t in search.study.trials}
    assert trials[second].params in [trials[n].params for n in rest]  # the lost point, asked again
    for n in (first, *rest):
        search.evaluate_trial(n)
    complete = [t for t in search.study.trials if t.state.name == "COMPLETE"]
    assert sorted(t.params[LEARNED_PARAM] for t in complete) == [0, 1, 2]


def test_layerwise_points_keep_each_groups_weights():
    space = SearchSpace(("a", "b"), "layerwise", ("embed", "blocks[0]", "head"))
    result = learned_search(storage=optuna.storages.InMemoryStorage(), learn=Learn(), space=space, n=3).run()
    path = fake_path(space)
    last = result.history[-1].weights
    for g in space.groups:
        assert last.groups[g] == pytest.approx(path.soup(path.best_step).groups[g], abs=1e-9)
    assert last.groups["embed"] != pytest.approx(last.groups["head"])  # each group its own weights
