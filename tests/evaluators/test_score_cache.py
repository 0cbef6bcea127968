"""The score cache: asking again returns the stored score without running (or loading) the model, and
a full hit imports neither torch nor lm-eval."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from evaluators import LmEvalEvaluator
from soce.db import Score, create_app_engine, session_scope
from soce.db.migrate import upgrade
from soce.schemas.suite import SuiteSpec
from soce.score_cache import score_checkpoint
from tests.evaluators.task_folder import Zoo

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = create_app_engine(f"sqlite:///{tmp_path / 'cache.sqlite'}")
    upgrade(engine)
    return engine


def forbid_model_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make any model load or lm-eval run fail; returns the tasks that were asked to run."""
    asked: list[str] = []

    def no_run(self, lm, tasks):
        asked.extend(tasks)
        raise AssertionError(f"the model ran on {list(tasks)}")

    monkeypatch.setattr(LmEvalEvaluator, "_run", no_run)
    return asked


def test_second_request_is_served_from_the_cache(zoo: Zoo, engine: Engine, monkeypatch) -> None:
    evaluator = LmEvalEvaluator(batch_size=8)
    first = score_checkpoint(evaluator, zoo.candidates[0], zoo.suite, "dev", engine=engine)
    assert first.cached_tasks == 0
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Score)) == len(zoo.suite.tasks)

    forbid_model_runs(monkeypatch)
    monkeypatch.setattr(LmEvalEvaluator, "load_checkpoint", lambda *a: pytest.fail("model loaded"))
    ticks: list[int] = []
    second = score_checkpoint(
        evaluator, zoo.candidates[0], zoo.suite, "dev", engine=engine, progress=ticks.append
    )
    assert second.cached_tasks == len(zoo.suite.tasks) and sum(ticks) == len(zoo.suite.tasks)
    for name, score in first.tasks.items():
        assert second.tasks[name].model_dump(exclude={"cached"}) == score.model_dump(exclude={"cached"})
    assert second.categories == first.categories and second.average == first.average


def test_only_missing_tasks_run(zoo: Zoo, engine: Engine, monkeypatch) -> None:
    evaluator = LmEvalEvaluator(batch_size=8)
    only_mc = SuiteSpec.parse(
        {**zoo.suite.model_dump(), "categories": [zoo.suite.model_dump()["categories"][0]]}
    )
    score_checkpoint(evaluator, zoo.candidates[1], only_mc, "dev", engine=engine)
    asked = forbid_model_runs(monkeypatch)
    with pytest.raises(AssertionError, match="the model ran"):
        score_checkpoint(evaluator, zoo.candidates[1], zoo.suite, "dev", engine=engine)
    assert asked == ["zoo_rev_gen"]
    asked.clear()
    with pytest.raises(AssertionError):  # the other split is other content
        score_checkpoint(evaluator, zoo.candidates[1], only_mc, "test", engine=engine)
    assert asked == ["zoo_add_mc"]


def test_a_full_hit_imports_no_torch_or_lm_eval(zoo: Zoo, tmp_path: Path) -> None:
    env = {**os.environ, "SOCE_DATA_DIR": str(tmp_path / "data")}
    warm = create_app_engine(f"sqlite:///{tmp_path / 'data' / 'soce.sqlite'}")  # the probe's default
    upgrade(warm)
    score_checkpoint(LmEvalEvaluator(batch_size=8), zoo.candidates[0], zoo.suite, "test", engine=warm)
    probe = f"""
import json, sys, time
from evaluators import LmEvalEvaluator
from soce.schemas.suite import SuiteSpec
from soce.score_cache import score_checkpoint
suite = SuiteSpec.from_file({str(zoo.suite_file)!r})
times = []
for _ in range(3):
    t = time.perf_counter()
    got = score_checkpoint(LmEvalEvaluator(), {str(zoo.candidates[0])!r}, suite, "test")
    times.append(time.perf_counter() - t)
heavy = [m for m in ("torch", "lm_eval", "transformers", "datasets") if m in sys.modules]
print(json.dumps({{"cached": got.cached_tasks, "heavy": heavy, "first": times[0], "warm": min(times[1:])}}))
"""
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(report)
    assert report["cached"] == len(zoo.suite.tasks)
    assert report["heavy"] == []
    assert report["warm"] < 0.25  # about 10 ms on an idle machine; generous for a busy CI box


def test_parts_of_dev_are_scored_and_cached_apart(zoo: Zoo, engine: Engine, monkeypatch) -> None:
    """The search and selection parts split each task's dev examples; each part has its own cache rows."""
    from soce.errors import EvaluationError
    from soce.schemas.suite import DevPart

    evaluator = LmEvalEvaluator(batch_size=8)
    search, select_ = DevPart(name="search", fraction=0.5), DevPart(name="select", fraction=0.5)
    whole = score_checkpoint(evaluator, zoo.candidates[0], zoo.suite, "dev", engine=engine)
    parts = [
        score_checkpoint(evaluator, zoo.candidates[0], zoo.suite, "dev", engine=engine, part=p)
        for p in (search, select_)
    ]
    assert [p.part for p in parts] == ["search", "select"] and whole.part is None
    for name, score in whole.tasks.items():
        a, b = (p.tasks[name] for p in parts)
        assert a.n > 0 and b.n > 0 and a.n + b.n == score.n  # disjoint, and together all of dev
        assert (a.value * a.n + b.value * b.n) / score.n == pytest.approx(score.value)  # mean metrics
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Score)) == 3 * len(zoo.suite.tasks)
    forbid_model_runs(monkeypatch)
    again = score_checkpoint(evaluator, zoo.candidates[0], zoo.suite, "dev", engine=engine, part=select_)
    assert again.cached_tasks == len(zoo.suite.tasks) and again.categories == parts[1].categories
    monkeypatch.undo()
    with pytest.raises(EvaluationError, match="falls in the dev select part"):
        evaluator.score_tasks(
            zoo.candidates[0], zoo.suite, "dev", zoo.suite.tasks, part=DevPart(name="select", fraction=1e-9)
        )


def test_a_soups_scores_are_cached_by_content_with_their_samples(zoo: Zoo, engine: Engine) -> None:
    """score_soup: keyed by the ingredients' contents, weights, method and dtype; a score stored
    without per-document values does not answer a request that needs them."""
    from soce.schemas.scores import TaskScore
    from soce.score_cache import score_soup, soup_hash

    evaluator = LmEvalEvaluator()
    evaluated: list[tuple[str, bool]] = []

    def evaluate(samples: bool):
        def run(tasks):
            evaluated.extend((t.name, samples) for t in tasks)
            values = (1.0, 0.0, 1.0, 1.0)
            return {
                t.name: TaskScore(
                    task=t.name, metric=t.metric, value=0.75, n=4, samples=values if samples else None
                )
                for t in tasks
            }

        return run

    def soup(weights=(0.25, 0.75), **kwargs) -> str:
        fields = {
            "ingredients": ["a" * 64, "b" * 64],
            "weights": weights,
            "dtype": "float32",
            "model": "a" * 64,
        }
        return soup_hash(**{**fields, **kwargs})

    every = [(t.name, False) for t in zoo.suite.tasks]
    plain = score_soup(evaluator, soup(), zoo.suite, "test", evaluate(False), engine=engine)
    assert evaluated == every and all(s.samples is None and not s.cached for s in plain.values())
    evaluated.clear()
    # stored without samples: a request that needs them evaluates again, and stores them
    with_samples = score_soup(
        evaluator, soup(), zoo.suite, "test", evaluate(True), engine=engine, samples=True
    )
    assert evaluated == [(name, True) for name, _ in every]
    evaluated.clear()
    again = score_soup(evaluator, soup(), zoo.suite, "test", evaluate(True), engine=engine, samples=True)
    assert evaluated == [] and all(s.cached for s in again.values())
    assert {n: s.samples for n, s in again.items()} == {n: s.samples for n, s in with_samples.items()}
    assert (
        score_soup(evaluator, soup(), zoo.suite, "test", evaluate(False), engine=engine)[
            zoo.suite.tasks[0].name
        ].samples
        is None
    )
    assert evaluated == []
    # rounding below 12 digits is the same soup; anything else it depends on is another
    assert soup((0.25 + 1e-14, 0.75)) == soup()
    others = [
        soup((0.3, 0.7)),
        soup(dtype="bfloat16"),
        soup(model="b" * 64),
        soup(ingredients=["b" * 64, "a" * 64]),
        soup(groups={"embed": (0.5, 0.5), "blocks[0]": (0.25, 0.75)}, layer_groups=1),
        soup(groups={"embed": (0.5, 0.5), "blocks[0]": (0.25, 0.75)}, layer_groups=2),
    ]
    assert len({soup(), *others}) == 1 + len(others)
    score_soup(evaluator, soup(), zoo.suite, "dev", evaluate(False), engine=engine)  # another split
    assert evaluated == every
