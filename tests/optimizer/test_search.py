"""Weight search on a synthetic objective: samplers, seeding, resuming, pruning, reuse of repeated points."""

from __future__ import annotations

import optuna
import pytest

from optimizer.records import objective_of
from optimizer.samplers import SearchConfig
from optimizer.search import WeightSearch
from optimizer.space import SearchSpace, SoupWeights, grid_points
from soce.errors import SearchError

CATS = ["x", "y", "z"]
TARGET = (0.5, 0.3, 0.2)


def scores_of(w) -> dict[str, float]:
    """Each category likes its own expert; all of them like weights near TARGET."""
    w = (*w, 0.0, 0.0)[:3]
    dist = sum((a - b) ** 2 for a, b in zip(w, TARGET, strict=True))
    return {c: 0.5 + 0.2 * w[i] - dist for i, c in enumerate(CATS)}


class Counter:
    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[tuple[tuple[float, ...], tuple[str, ...]]] = []
        self.fail_after = fail_after

    def __call__(self, weights: SoupWeights, categories):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("worker lost")
        self.calls.append((weights.weights, tuple(categories)))
        s = scores_of(weights.weights)
        return {c: s[c] for c in categories}


def search(sampler, n=None, *, storage=None, name="s", evaluate=None, space=None, **kw):
    space = space or SearchSpace(("a", "b", "c"))
    return WeightSearch(
        space,
        CATS,
        evaluate or Counter(),
        SearchConfig(sampler=sampler, n_trials=n, seed=kw.pop("seed", 0), **kw),
        storage=storage or optuna.storages.InMemoryStorage(),
        study_name=name,
    )


def test_grid_evaluates_every_point_once_and_finds_the_grid_best():
    ev = Counter()
    result = search("grid", evaluate=ev).run()
    points = grid_points(3)
    assert result.n_trials == len(points) == 37 and result.evaluations == 37
    assert sorted(w for w, _ in ev.calls) == sorted(points)
    best = max(points, key=lambda p: objective_of(scores_of(p), CATS, {}))
    assert result.best.weights.weights == pytest.approx(best)


@pytest.mark.parametrize("sampler", ["tpe", "cmaes", "nsga2"])
def test_samplers_improve_on_uniform_and_are_seeded(sampler):
    uniform = objective_of(scores_of((1 / 3, 1 / 3, 1 / 3)), CATS, {})
    first = search(sampler, 24).run()
    again = search(sampler, 24).run()
    assert [t.weights for t in first.history] == [t.weights for t in again.history]
    assert first.best.objective > uniform
    for t in first.history:
        assert sum(t.weights.weights) == pytest.approx(1.0) and min(t.weights.weights) >= 0
    other_seed = search(sampler, 24, seed=7).run()
    assert [t.weights for t in other_seed.history] != [t.weights for t in first.history]


def test_nsga2_has_one_objective_per_category_and_picks_by_mean():
    s = search("nsga2", 16)
    result = s.run()
    assert len(s.study.directions) == 3
    assert result.best.objective == max(t.objective for t in result.history if t.objective is not None)
    assert result.best.objective == pytest.approx(sum(result.best.category_scores.values()) / 3)


def test_a_resumed_study_does_not_repeat_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.sqlite'}"
    crashing = Counter(fail_after=6)
    with pytest.raises(RuntimeError, match="worker lost"):
        search("tpe", 15, storage=url, evaluate=crashing).run()
    # a worker killed mid-trial leaves it RUNNING: that point is asked again first
    study = optuna.load_study(study_name="s", storage=url)
    study.enqueue_trial({"u0": 0.9, "u1": 0.1})
    stale = study.ask()
    stale.suggest_float("u0", 0.0, 1.0), stale.suggest_float("u1", 0.0, 1.0)
    resumed_eval = Counter()
    result = search("tpe", 15, storage=url, evaluate=resumed_eval).run()
    states = [t.state for t in result.history]
    assert states.count("COMPLETE") == 15
    assert len(crashing.calls) + len(resumed_eval.calls) == 15  # finished trials were not run again
    stale_weights = SearchSpace(("a", "b", "c")).from_params(stale.params).weights
    assert resumed_eval.calls[0][0] == pytest.approx(stale_weights)
    done = [tuple(round(x, 9) for x in t.weights.weights) for t in result.history if t.state == "COMPLETE"]
    assert len(set(done)) == len(done)
    # continuing a finished study runs nothing; a larger n_trials adds only the difference
    idle = Counter()
    assert search("tpe", 15, storage=url, evaluate=idle).run().n_trials == 15 and idle.calls == []
    more = Counter()
    assert search("tpe", 18, storage=url, evaluate=more).run().n_trials == 18 and len(more.calls) == 3


def test_a_study_of_another_search_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.sqlite'}"
    search("tpe", 2, storage=url).run()
    with pytest.raises(SearchError, match="another search"):
        search("tpe", 2, storage=url, space=SearchSpace(("a", "b", "d")))


def test_pruning_never_loses_the_best_and_saves_evaluations():
    full = search("grid").run()
    ev = Counter()
    pruned = search("grid", evaluate=ev, pruning=True).run()
    assert pruned.best.weights == full.best.weights
    assert pruned.best.objective == pytest.approx(full.best.objective)
    states = [t.state for t in pruned.history]
    assert "PRUNED" in states
    assert sum(len(c) for _, c in ev.calls) < 37 * 3  # category evaluations saved
    assert all(len(c) == 1 for _, c in ev.calls)  # one category at a time


def test_repeated_points_reuse_the_first_result():
    ev = Counter()
    result = search("tpe", 4, evaluate=ev, space=SearchSpace(("a",))).run()
    assert result.n_trials == 4 and result.evaluations == 1 and len(ev.calls) == 1


def test_parallel_trials_finish_the_same_count():
    ev = Counter()
    result = search("tpe", 12, evaluate=ev, parallel=3).run()
    assert result.n_trials == 12 and len(ev.calls) == 12


def test_bad_configurations_name_the_problem():
    with pytest.raises(SearchError, match="more than the 37 points"):
        search("grid", 50)
    with pytest.raises(SearchError, match="layerwise"):
        search("grid", space=SearchSpace(("a", "b"), "layerwise", ("embed", "head")))
    with pytest.raises(SearchError, match="pruning needs one objective"):
        search("nsga2", 4, pruning=True)
    with pytest.raises(SearchError, match="cmaes needs at least 2"):
        search("cmaes", 4, space=SearchSpace(("a", "b")))


def drive(s: WeightSearch, evaluators: list[WeightSearch], parallel: int) -> list[int]:
    """Run a study the way trial tasks do: ask up to `parallel`, evaluate each by number elsewhere."""
    s.begin(lambda t: True)
    order: list[int] = []
    pending = s.ask_trials(parallel, {"job": 1})
    while pending:
        number = pending.pop(0)
        evaluators[number % len(evaluators)].evaluate_trial(number)
        order.append(number)
        finished, running = s.tally()
        pending += s.ask_trials(min(parallel - len(running), s.n_trials - finished - len(running)))
    return order


def test_trials_asked_in_one_place_and_evaluated_in_others(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.sqlite'}"
    asker = search("tpe", 8, storage=url, evaluate=Counter(fail_after=0))  # never evaluates
    counters = [Counter(), Counter()]
    others = [search("tpe", 8, storage=url, evaluate=c) for c in counters]
    asker.begin(lambda t: True)
    assert asker.ask_trials(3, {"job": 7, "asked_by": "search"}) == [0, 1, 2]
    finished, running = asker.tally()
    assert finished == 0 and [t.number for t in running] == [0, 1, 2]
    assert running[1].user_attrs == {"job": 7, "asked_by": "search"}
    # trial 0 is the enqueued uniform point; its weights were fixed when it was asked
    assert others[0].evaluate_trial(0, {"worker": "w0"}) is True
    assert counters[0].calls[0][0] == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert others[1].evaluate_trial(0) is False  # a second delivery of a finished trial does nothing
    assert len(counters[1].calls) == 0
    assert others[1].evaluate_trial(2) is True and others[0].evaluate_trial(1) is True
    order = drive(asker, others, parallel=3)
    result = asker.result()
    assert result.n_trials == 8 and result.evaluations == 8 and sorted(order) == list(range(3, 8))
    assert sum(len(c.calls) for c in counters) == 8
    study = optuna.load_study(study_name="s", storage=url)
    assert all(t.state.name == "COMPLETE" and "category_scores" in t.user_attrs for t in study.trials)
    assert study.trials[0].user_attrs["worker"] == "w0"


def test_grid_points_and_repeated_points_when_driven_from_outside():
    s = search("grid", parallel=4)
    ev = Counter()
    drive(s, [search("grid", storage=s.storage, evaluate=ev)], parallel=4)
    result = s.result()
    assert result.n_trials == 37 and sorted(w for w, _ in ev.calls) == sorted(grid_points(3))
    one = SearchSpace(("a",))
    s = search("tpe", 4, space=one)
    ev = Counter()
    drive(s, [search("tpe", 4, space=one, storage=s.storage, evaluate=ev)], parallel=1)
    assert s.result().evaluations == 1 and len(ev.calls) == 1


def test_pruning_when_driven_from_outside_uses_the_stored_best():
    s = search("grid", pruning=True)
    ev = Counter()
    drive(s, [search("grid", storage=s.storage, evaluate=ev, pruning=True)], parallel=2)
    full = search("grid").run()
    assert s.result().best.weights == full.best.weights
    assert "PRUNED" in [t.state for t in s.result().history]
    assert sum(len(c) for _, c in ev.calls) < 37 * 3


def test_a_failed_evaluation_fails_its_trial_and_stale_trials_are_asked_again():
    s = search("tpe", 5)
    s.begin(lambda t: True)
    first, second = s.ask_trials(2, {"job": 1})
    broken = search("tpe", 5, storage=s.storage, evaluate=Counter(fail_after=0))
    with pytest.raises(RuntimeError, match="worker lost"):
        broken.evaluate_trial(first)
    assert s.study.trials[first].state.name == "FAIL"
    assert "worker lost" in s.study.trials[first].user_attrs["error"]
    # trial `second` belongs to a run that is over: a new search fails it and asks its point first
    params = s.study.trials[second].params
    s.begin(lambda t: t.user_attrs.get("job") == 1)
    assert s.study.trials[second].state.name == "FAIL"
    (again,) = s.ask_trials(1, {"job": 2})
    assert s.study.trials[again].params == pytest.approx(params)
    # a running trial a stale predicate spares is left alone
    s.begin(lambda t: False)
    assert s.study.trials[again].state.name == "RUNNING"


def test_trials_asked_by_fresh_processes_explore_and_are_seeded(tmp_path):
    def ask_each_from_a_new_search(url: str) -> list[dict]:
        for _ in range(5):  # every trial task opens the study anew, as a new process would
            s = search("tpe", 8, storage=url)
            s.begin(lambda t: False)
            (number,) = s.ask_trials(1)
            s.evaluate_trial(number)
        return [t.params for t in optuna.load_study(study_name="s", storage=url).trials]

    first = ask_each_from_a_new_search(f"sqlite:///{tmp_path / 'a.sqlite'}")
    assert len({tuple(sorted(p.items())) for p in first}) == 5  # no start point drawn twice
    assert ask_each_from_a_new_search(f"sqlite:///{tmp_path / 'b.sqlite'}") == first


@pytest.mark.parametrize("sampler", ["tpe", "cmaes", "nsga2"])
def test_every_sampler_can_be_driven_from_outside(sampler):
    s = search(sampler, 12, parallel=3)
    ev = Counter()
    drive(s, [search(sampler, 12, storage=s.storage, evaluate=ev)], parallel=3)
    result = s.result()
    assert result.n_trials == 12 and [t.state for t in result.history] == ["COMPLETE"] * 12
    assert len({t.weights.key() for t in result.history}) == len(ev.calls) == result.evaluations


def test_trials_are_stored_whole_in_order_and_an_error_loses_only_unfinished_ones(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.sqlite'}"
    crashing = Counter(fail_after=7)
    with pytest.raises(RuntimeError, match="worker lost"):
        search("tpe", 20, storage=url, evaluate=crashing, parallel=3).run()
    stored = optuna.load_study(study_name="s", storage=url).trials
    assert [t.number for t in stored] == list(range(len(stored)))  # numbered as they were asked
    states = [t.state.name for t in stored]
    assert "RUNNING" not in states and states.count("COMPLETE") == len(crashing.calls) == 7
    errors = [t.user_attrs["error"] for t in stored if t.state.name == "FAIL"]
    assert errors and all("worker lost" in e or "never evaluated" in e for e in errors)
    assert "worker lost" in errors[0]
    for t in stored:
        if t.state.name == "COMPLETE":  # every attribute arrives with its trial
            assert set(t.user_attrs) >= {"weights", "category_scores", "timings", "objective"}
            assert t.value == pytest.approx(t.user_attrs["objective"])
    resumed = Counter()
    result = search("tpe", 20, storage=url, evaluate=resumed, parallel=3).run()
    assert result.n_trials == 20 and len(resumed.calls) == 13
    again = optuna.load_study(study_name="s", storage=url).trials
    assert [t.number for t in again] == list(range(len(again)))
    assert [r.number for r in result.history] == [t.number for t in again]


def test_a_trial_asked_without_all_its_parameters_is_failed_not_evaluated():
    s = search("tpe", 4)
    s.begin(lambda t: True)
    trial = s.study.ask()  # the asker died after one of its two parameters
    trial.suggest_float("u0", 0.0, 1.0)
    ev = Counter()
    assert search("tpe", 4, storage=s.storage, evaluate=ev).evaluate_trial(trial.number) is False
    assert ev.calls == [] and s.study.trials[trial.number].state.name == "FAIL"
    assert "asker stopped" in s.study.trials[trial.number].user_attrs["error"]
