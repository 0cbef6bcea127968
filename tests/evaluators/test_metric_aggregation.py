"""Per-document metrics are aggregated with lm-eval's public metric API into exactly the numbers its
evaluate() reports: the same values and standard errors (analytic, bootstrapped, or "N/A")."""

from __future__ import annotations

import math

import pytest
import yaml
from lm_eval import evaluator_utils
from lm_eval.api.metrics import matthews_corrcoef, mean

from evaluators import LmEvalEvaluator
from evaluators.batched_lm import BatchedLM
from evaluators.prepared_tasks import TaskResult, aggregate_metrics, evaluate_prepared
from soce.schemas.suite import SuiteSpec
from tests.evaluators.task_folder import Zoo

pytestmark = pytest.mark.usefixtures("one_thread")

# what lm-eval's evaluate() aggregates with (0.4.13); absent from a later release, the comparisons skip
# and the pinned numbers and the command-line comparison (test_lm_eval_evaluator.py) still hold
LM_EVAL_AGGREGATION = getattr(evaluator_utils, "_compute_task_aggregations", None)
needs_lm_evals_aggregation = pytest.mark.skipif(
    LM_EVAL_AGGREGATION is None, reason="this lm-eval has no _compute_task_aggregations to compare with"
)


class Task:
    """The part of an lm-eval task that aggregation reads."""

    task_name = "probe"

    def __init__(self, aggregations: dict) -> None:
        self.aggregations = aggregations

    def aggregation(self) -> dict:
        return self.aggregations


def test_means_get_analytic_standard_errors() -> None:
    metrics, n = aggregate_metrics(Task({"acc": mean}), {("acc", "none"): [1, 0, 1, 1]}, 100_000)
    # mean 0.75; sample standard deviation 0.5 over sqrt(4) documents
    assert (metrics, n) == ({"acc,none": 0.75, "acc_stderr,none": 0.25}, 4)


def test_standard_errors_are_na_where_lm_eval_gives_none() -> None:
    raw = {("acc", "none"): [1, 0], ("one", "none"): [1.0]}
    assert aggregate_metrics(Task({"acc": mean}), raw, 0)[0]["acc_stderr,none"] == "N/A"
    assert aggregate_metrics(Task({"acc": mean}), raw, None)[0]["acc_stderr,none"] == "N/A"
    metrics, n = aggregate_metrics(Task({"acc": mean}), raw, 1000)
    assert metrics["one,none"] == 1.0 and metrics["one_stderr,none"] == "N/A"  # undeclared: the mean
    assert n == 2


@needs_lm_evals_aggregation
@pytest.mark.filterwarnings("ignore:A single label was found")  # sklearn, on some resamples of mcc
@pytest.mark.parametrize("bootstrap_iters", [100_000, 1000, 0, None])
def test_equals_lm_evals_aggregation(bootstrap_iters: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISABLE_MULTIPROC", "1")  # lm-eval's bootstrap in this process: same draws
    task = Task({"acc": mean, "mcc": matthews_corrcoef})
    raw = {
        ("acc", "none"): [1, 0, 1, 1, 0, 1],
        ("acc", "strict"): [1, 0, 0, 1, 0, 0],
        ("mcc", "none"): [(1, 1), (0, 1), (1, 0), (0, 0), (1, 1), (0, 0)],
        ("undeclared", "none"): [0.5, 0.25, 1.0],
        ("single", "none"): [2.0],
    }
    if bootstrap_iters == 100_000:
        del raw[("mcc", "none")]  # 100 000 resamples of a corpus metric: seconds for nothing new
    assert aggregate_metrics(task, raw, bootstrap_iters) == LM_EVAL_AGGREGATION(task, raw, bootstrap_iters)


# --- on the evaluator's fixture: every metric of its tasks, and tasks with more metrics ---


def more_metrics_suite(zoo: Zoo) -> SuiteSpec:
    """The fixture's tasks with lm-eval's other multiple-choice metrics (bootstrapped ones among them),
    corpus metrics on generations, and a named filter."""
    tasks = zoo.root / "tasks"
    mc = yaml.safe_load((tasks / "zoo_add_mc.yaml").read_text())
    mc["task"] = "zoo_add_mc_more"
    # not f1: lm-eval's f1 takes two classes, and these tasks have four choices
    mc["metric_list"] = [{"metric": m} for m in ("acc", "acc_norm", "mcc", "brier_score")]
    gen = yaml.safe_load((tasks / "zoo_rev_gen.yaml").read_text())
    gen["task"] = "zoo_rev_gen_more"
    gen["metric_list"] = [{"metric": m} for m in ("exact_match", "bleu", "chrf")]
    gen["filter_list"] = [{"name": "first", "filter": [{"function": "take_first"}]}]
    for cfg in (mc, gen):
        (tasks / f"{cfg['task']}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    suite = yaml.safe_load(zoo.suite_file.read_text())
    suite["categories"] = [
        {"name": "arithmetic", "tasks": [{"name": "zoo_add_mc_more", "metric": "mcc,none"}]},
        {"name": "strings", "tasks": [{"name": "zoo_rev_gen_more", "metric": "bleu,first"}]},
    ]
    path = zoo.root / "suite-more.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return SuiteSpec.from_file(path)


def fixture_results(zoo: Zoo, suite: SuiteSpec, split: str, bootstrap_iters: int) -> dict[str, TaskResult]:
    evaluator = LmEvalEvaluator(batch_size=8, device="cpu")
    model, tokenizer = evaluator.load_checkpoint(zoo.candidates[0])
    task_set = evaluator.task_set(suite, split)
    with task_set.lock:
        prepared = {t.name: task_set.prepare(t.name, seed=suite.seed, limit=suite.limit) for t in suite.tasks}
        return evaluate_prepared(
            BatchedLM(model, tokenizer, batch_size=8), prepared, bootstrap_iters=bootstrap_iters
        )


def assert_same(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(ours[key]), key
        else:
            assert ours[key] == value, key


@needs_lm_evals_aggregation
@pytest.mark.parametrize("split", ["dev", "test"])
def test_fixture_metrics_equal_lm_evals_aggregation(zoo: Zoo, split: str) -> None:
    suite = zoo.suite
    for name, result in fixture_results(zoo, suite, split, 100_000).items():
        task = LmEvalEvaluator().task_set(suite, split).tasks[name]
        theirs, n = LM_EVAL_AGGREGATION(task, result.per_doc, 100_000)
        assert_same(result.metrics, theirs)
        assert result.n == n == len(result.per_doc[next(iter(result.per_doc))])


@pytest.mark.slow
@needs_lm_evals_aggregation
def test_more_metrics_equal_lm_evals_aggregation(fresh_zoo: Zoo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISABLE_MULTIPROC", "1")
    suite = more_metrics_suite(fresh_zoo)
    results = fixture_results(fresh_zoo, suite, "dev", 1000)
    keys = {k for result in results.values() for k in result.metrics}
    assert {"mcc_stderr,none", "acc_norm,none", "brier_score,none", "bleu_stderr,first", "chrf,first"} <= keys
    for name, result in results.items():
        task = LmEvalEvaluator().task_set(suite, "dev").tasks[name]
        theirs, n = LM_EVAL_AGGREGATION(task, result.per_doc, 1000)
        assert_same(result.metrics, theirs)
        assert result.n == n
