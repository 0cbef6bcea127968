"""Suites, tasks, metrics and models that cannot be used fail with one message naming what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from evaluators import EVALUATORS, LmEvalEvaluator, build_evaluator
from evaluators.harness import TaskResult, _read_score
from soce.errors import EvaluationError, SuiteError
from soce.schemas.suite import SuiteSpec, TaskSpec
from soce.score_cache import score_checkpoint
from tests.evaluators.task_folder import Zoo

pytestmark = pytest.mark.usefixtures("one_thread")


def suite_with(zoo: Zoo, **changes) -> SuiteSpec:
    return SuiteSpec.parse({**zoo.suite.model_dump(), **changes})


@pytest.mark.parametrize(
    "categories, message",
    [
        ([{"name": "a", "tasks": []}], "category 'a' has no tasks"),
        ([], "a suite needs at least one category"),
        (
            [{"name": "a", "tasks": [{"name": "t"}]}, {"name": "a", "tasks": [{"name": "u"}]}],
            "category name 'a' is used twice",
        ),
        (
            [{"name": "a", "tasks": [{"name": "t"}]}, {"name": "b", "tasks": [{"name": "t"}]}],
            "task 't' appears twice (in 'a' and 'b')",
        ),
    ],
)
def test_invalid_suites_are_refused(tmp_path: Path, categories: list, message: str) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "categories": categories}))
    with pytest.raises(SuiteError) as err:
        SuiteSpec.from_file(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_unknown_task_names_it_and_lists_the_offered_ones(zoo: Zoo) -> None:
    suite = suite_with(zoo, categories=[{"name": "c", "tasks": [{"name": "zoo_nope"}]}])
    with pytest.raises(SuiteError) as err:
        LmEvalEvaluator().task_set(suite, "dev")
    assert "'zoo_nope'" in str(err.value) and "zoo_add_mc, zoo_rev_gen" in str(err.value)
    # and before any model is loaded
    with pytest.raises(SuiteError):
        score_checkpoint(LmEvalEvaluator(), zoo.candidates[0], suite, "dev")


def test_include_path_must_be_a_folder(zoo: Zoo) -> None:
    suite = suite_with(zoo, include_path=str(zoo.root / "no-such-folder"))
    with pytest.raises(SuiteError, match="is not a folder"):
        LmEvalEvaluator().task_set(suite, "dev")


def test_a_metric_the_task_does_not_produce(zoo: Zoo) -> None:
    cats = [{"name": "c", "tasks": [{"name": "zoo_add_mc", "metric": "f1,none"}]}]
    with pytest.raises(EvaluationError) as err:
        LmEvalEvaluator().task_set(suite_with(zoo, categories=cats), "dev")
    assert "'zoo_add_mc'" in str(err.value) and "'f1,none'" in str(err.value)
    assert "acc,none" in str(err.value)


def test_a_metric_missing_from_lm_eval_results() -> None:
    result = TaskResult({"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1}, 2, {("acc", "none"): [0, 1]})
    with pytest.raises(EvaluationError) as err:
        _read_score(TaskSpec(name="t", metric="acc_norm,none"), result)
    assert str(err.value) == "task 't' produced no metric 'acc_norm,none' (it produced: acc,none)"


def test_a_task_whose_data_cannot_load(fresh_zoo: Zoo) -> None:
    (fresh_zoo.root / "data" / "zoo_rev_gen" / "dev.jsonl").unlink()
    with pytest.raises(EvaluationError, match="task 'zoo_rev_gen' failed to load"):
        LmEvalEvaluator().task_set(fresh_zoo.suite, "dev")


def test_a_split_the_task_data_lacks(zoo: Zoo) -> None:
    suite = suite_with(zoo, dev_split="train")
    with pytest.raises(EvaluationError) as err:
        LmEvalEvaluator().task_set(suite, "dev")
    assert "has no split 'train'" in str(err.value) and "validation, test" in str(err.value)


def test_a_model_that_fails_to_load_names_its_folder(tmp_path: Path, zoo: Zoo) -> None:
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(EvaluationError, match=f"{bad}: cannot be loaded as a causal language model"):
        LmEvalEvaluator().score(bad, zoo.suite, "dev")
    with pytest.raises(EvaluationError, match="no such checkpoint folder"):
        LmEvalEvaluator().score(tmp_path / "missing", zoo.suite, "dev")


def test_the_registry_refuses_unknown_names() -> None:
    assert set(EVALUATORS) == {"lm_eval", "external"}
    with pytest.raises(EvaluationError, match="unknown evaluator 'helm'; available: external, lm_eval"):
        build_evaluator("helm")
