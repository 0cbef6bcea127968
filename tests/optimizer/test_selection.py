"""The final choice on the selection part (hand-built per-example scores), the ingredient pool, the split."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.experts import choose_experts, ingredient_pool
from optimizer.selection import Contender, select_final
from soce.schemas.suite import DevPart, example_position

# two categories of one task each, equal weights
STRUCTURE = [(1.0, [("t1", 1.0)]), (1.0, [("t2", 1.0)])]
N = 200


def _answers(rng: np.random.Generator, accuracy: float) -> list[float]:
    return (rng.random(N) < accuracy).astype(float).tolist()


def _flip(values: list[float], rng: np.random.Generator, *, fix: int = 0, break_: int = 0) -> list[float]:
    """`values` with `fix` wrong answers made right and `break_` right answers made wrong."""
    out = np.asarray(values).copy()
    wrong, right = np.flatnonzero(out == 0), np.flatnonzero(out == 1)
    out[rng.choice(wrong, fix, replace=False)] = 1
    out[rng.choice(right, break_, replace=False)] = 0
    return out.tolist()


def _contender(name: str, samples: dict, *, simplicity: int = 3) -> Contender:
    kind = "single" if name == "best_single" else "soup"
    return Contender(name, name, kind, 0 if kind == "single" else simplicity, samples)


@pytest.fixture
def single() -> dict[str, list[float]]:
    rng = np.random.default_rng(1)
    return {"t1": _answers(rng, 0.6), "t2": _answers(rng, 0.5)}


def test_every_soup_worse_keeps_the_single(single):
    rng = np.random.default_rng(2)
    worse = [
        _contender(f"trial_{i}", {t: _flip(v, rng, fix=3, break_=12) for t, v in single.items()})
        for i in range(3)
    ]
    sel = select_final([_contender("best_single", single), *worse], STRUCTURE, iterations=1000)
    assert sel.kind == "single" and sel.chosen == "best_single"
    assert all(not r.passed and r.diff < 0 for r in sel.results if r.name != "best_single")
    assert sel.best_soup in {"trial_0", "trial_1", "trial_2"}
    assert sel.reason.startswith("no soup beat best_single on the selection part")


def test_a_clearly_better_soup_is_chosen(single):
    rng = np.random.default_rng(3)
    better = {t: _flip(v, rng, fix=30, break_=4) for t, v in single.items()}  # +13 points a task
    slightly = {t: _flip(v, rng, fix=6, break_=4) for t, v in single.items()}
    sel = select_final(
        [
            _contender("best_single", single),
            _contender("uniform", slightly, simplicity=1),
            _contender("trial_7", better),
        ],
        STRUCTURE,
        iterations=1000,
    )
    assert sel.kind == "soup" and sel.chosen == "trial_7"
    chosen = sel.result("trial_7")
    assert chosen.passed and chosen.low > 0 and chosen.diff == pytest.approx(0.13)
    assert not sel.result("uniform").passed  # +1 point on 200 examples a task is not significant


def test_equal_scores_go_to_the_simpler_soup(single):
    rng = np.random.default_rng(4)
    better = {t: _flip(v, rng, fix=30) for t, v in single.items()}
    sel = select_final(
        [
            _contender("best_single", single),
            _contender("trial_3", better),
            _contender("greedy", better, simplicity=2),
            _contender("uniform", better, simplicity=1),
        ],
        STRUCTURE,
        iterations=500,
    )
    assert sel.kind == "soup" and sel.chosen == "uniform"


def test_a_soup_equal_to_the_single_never_wins(single):
    sel = select_final(
        [_contender("best_single", single), _contender("trial_0", dict(single))], STRUCTURE, iterations=300
    )
    assert sel.kind == "single" and sel.result("trial_0").diff == 0 and not sel.result("trial_0").passed


def test_bounds_hold_for_all_soups_at_once():
    """Thirty soups as good as the single: one looks best by chance, the simultaneous bound refuses it."""
    rng = np.random.default_rng(5)
    single = {"t1": _answers(rng, 0.5), "t2": _answers(rng, 0.5)}

    def noisy(values: list[float]) -> list[float]:  # each answer flipped with probability 0.1
        return np.abs(np.asarray(values) - (rng.random(N) < 0.1)).tolist()

    noise = [_contender(f"trial_{i}", {t: noisy(v) for t, v in single.items()}) for i in range(30)]
    contenders = [_contender("best_single", single), *noise]
    sel = select_final(contenders, STRUCTURE, iterations=2000)
    assert sel.kind == "single"
    lucky = max((r for r in sel.results if r.name != "best_single"), key=lambda r: r.diff)
    assert lucky.diff > 0
    # compared alone, the lucky one's bound is higher than among thirty: the correction is real
    alone = select_final(
        [contenders[0], next(c for c in noise if c.name == lucky.name)], STRUCTURE, iterations=2000
    )
    assert alone.result(lucky.name).low > lucky.low


def test_contenders_must_share_examples(single):
    short = {"t1": single["t1"][:-1], "t2": single["t2"]}
    with pytest.raises(ValueError, match="not the same examples"):
        select_final([_contender("best_single", single), _contender("trial_0", short)], STRUCTURE)
    with pytest.raises(ValueError, match="reference"):
        select_final([_contender("trial_0", single)], STRUCTURE)


# --- the ingredient pool ----------------------------------------------------------------------------
CANDS = ["math", "code", "generalist"]
CATS = ["arithmetic", "coding"]
VALUES = [[0.80, 0.40], [0.40, 0.80], [0.70, 0.70]]
AVG = [0.60, 0.60, 0.70]


def test_the_pool_holds_the_best_single_candidate():
    experts = choose_experts(CANDS, CATS, VALUES, AVG, ["arithmetic", "coding"])
    assert experts.candidates == ["math", "code"]  # the generalist is expert in nothing
    pool = ingredient_pool(experts, CANDS, AVG)
    assert pool.candidates == ["math", "code", "generalist"]
    reason = pool.choices[-1]
    assert reason.candidate == "generalist" and reason.category is None
    assert "best single candidate by dev average (0.7000)" in reason.reason
    # the paper's pool: the experts only
    assert ingredient_pool(experts, CANDS, AVG, include_best_single=False) == experts


def test_a_best_single_that_is_an_expert_is_not_added_twice():
    avg = [0.75, 0.60, 0.70]
    experts = choose_experts(CANDS, CATS, VALUES, avg, ["arithmetic", "coding"])
    pool = ingredient_pool(experts, CANDS, avg)
    assert pool.candidates == ["math", "code"]
    assert pool.choices[-1].reason == "also the best single candidate by dev average (0.7500)"


# --- the split of dev -------------------------------------------------------------------------------
def test_the_split_is_deterministic_disjoint_and_whole():
    examples = [{"prompt": f"add {i} {j}=", "target": str(i + j)} for i in range(30) for j in range(20)]
    search, select = DevPart(name="search", fraction=0.4), DevPart(name="select", fraction=0.4)
    in_search = [e for e in examples if search.holds(e)]
    in_select = [e for e in examples if select.holds(e)]
    assert len(in_search) + len(in_select) == len(examples)
    assert not {str(e) for e in in_search} & {str(e) for e in in_select}
    assert 0.33 < len(in_select) / len(examples) < 0.47
    # by content alone: the same example lands in the same part in any order, key order or rerun
    shuffled = list(reversed(examples))
    assert [e for e in shuffled if select.holds(e)] == list(reversed(in_select))
    reordered = {"target": "3", "prompt": "add 1 2="}
    assert example_position(reordered) == example_position({"prompt": "add 1 2=", "target": "3"})
    assert example_position({"prompt": "add 1 2=", "target": "4"}) != example_position(reordered)


def test_parts_are_checked():
    with pytest.raises(ValueError, match="fraction"):
        DevPart(name="select", fraction=0)
    with pytest.raises(ValueError, match="name"):
        DevPart(name="train", fraction=0.5)  # type: ignore[arg-type]
