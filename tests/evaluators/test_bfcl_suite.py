"""`soce suite bfcl`: BFCL's single-turn categories as a suite of lm-eval tasks, split into dev and
test by item id, prompted through the model's chat template and scored by BFCL's checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evaluators.bfcl import CATEGORIES, find_bfcl_data
from evaluators.bfcl.lm_eval_task import process_results
from evaluators.bfcl.suite_files import in_dev, write_bfcl_suite
from evaluators.harness import LmEvalEvaluator
from soce.cli import app
from soce.errors import SuiteError
from soce.schemas.suite import SuiteSpec
from tests.evaluators.task_folder import Zoo
from tests.evaluators.test_chat_template import TEMPLATE, with_template

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def bfcl_suite(bfcl_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bfcl_suite(tmp_path_factory.mktemp("bfcl") / "bfcl.yaml", data=bfcl_wheel, limit=2)


def rows(suite_file: Path, category: str, split: str) -> list[dict]:
    path = suite_file.with_name("bfcl_tasks") / "data" / category / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_category_is_split_by_item_id_without_overlap(bfcl_suite: Path, bfcl_wheel: Path) -> None:
    suite = SuiteSpec.from_file(bfcl_suite)
    assert suite.category_names == list(CATEGORIES)
    assert suite.apply_chat_template and suite.limit == 2
    assert [s.name for s in suite.summaries] == ["non_live_ast", "live_ast"]
    data = find_bfcl_data(bfcl_wheel)
    for category in CATEGORIES:
        dev, test = rows(bfcl_suite, category, "dev"), rows(bfcl_suite, category, "test")
        dev_ids, test_ids = {r["id"] for r in dev}, {r["id"] for r in test}
        assert dev_ids and test_ids and not dev_ids & test_ids
        assert dev_ids | test_ids == {item.id for item in data.items(category)}
        assert all(in_dev(i, 0.5) for i in dev_ids) and not any(in_dev(i, 0.5) for i in test_ids)
        share = len(dev_ids) / (len(dev_ids) + len(test_ids))
        assert 0.25 < share < 0.75, (category, share)


def test_the_same_data_writes_the_same_suite(bfcl_suite: Path, bfcl_wheel: Path, tmp_path: Path) -> None:
    again = write_bfcl_suite(tmp_path / "bfcl.yaml", data=bfcl_wheel, limit=2)
    for category in ("simple_python", "live_irrelevance"):
        for split in ("dev", "test"):
            assert rows(again, category, split) == rows(bfcl_suite, category, split)
    with pytest.raises(SuiteError, match="exists"):
        write_bfcl_suite(tmp_path / "bfcl.yaml", data=bfcl_wheel)
    with pytest.raises(SuiteError, match="unknown BFCL category 'multi_turn_base'"):
        write_bfcl_suite(tmp_path / "other.yaml", data=bfcl_wheel, categories=["multi_turn_base"])
    assert not (tmp_path / "other.yaml").exists() and not (tmp_path / "other_tasks").exists()


def gold(value: object) -> object:
    """An acceptable value as a model would write it: a nested dict's keys take their first option."""
    if isinstance(value, dict):
        return {k: gold(v[0]) for k, v in value.items() if v and v[0] != ""}
    if isinstance(value, list):
        return [gold(v) for v in value]
    return value


def test_gold_answers_pass_and_text_fails(bfcl_suite: Path) -> None:
    for category in ("simple_python", "parallel_multiple", "live_multiple"):
        doc = rows(bfcl_suite, category, "test")[0]
        answer = json.loads(doc["item"])["ground_truth"]
        calls = []
        for call in answer:
            ((name, params),) = call.items()
            args = ", ".join(f"{k}={gold(v[0])!r}" for k, v in params.items() if v and v[0] != "")
            calls.append(f"{name}({args})")
        assert process_results(doc, ["[" + ", ".join(calls) + "]"]) == {"accuracy": 1.0}, category
        assert process_results(doc, ["I cannot help with that."]) == {"accuracy": 0.0}
    doc = rows(bfcl_suite, "irrelevance", "test")[0]
    assert process_results(doc, ["None of the functions fits."]) == {"accuracy": 1.0}


@pytest.mark.slow
def test_a_chat_model_is_scored_on_every_category(bfcl_suite: Path, zoo: Zoo, tmp_path: Path) -> None:
    """A tiny random model writes no function call: it passes only the irrelevance categories."""
    model = with_template(zoo.candidates[0], tmp_path / "chat", TEMPLATE)
    config = json.loads((model / "config.json").read_text())  # rotary positions: any length runs
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 768}))
    suite = SuiteSpec.from_file(bfcl_suite)
    scores = LmEvalEvaluator(batch_size=4, device="cpu").score(model, suite, "test")
    for category in CATEGORIES:
        expected = 1.0 if category in ("irrelevance", "live_irrelevance") else 0.0
        assert scores.categories[category].value == expected, category
        assert scores.categories[category].n == 2
    task_set = LmEvalEvaluator(batch_size=8, device="cpu").task_set(suite, "test")
    prompt = next(iter(task_set.prepared.values())).requests[0][0].args[0]
    assert prompt.startswith("<system>") and '"name"' in prompt and prompt.endswith("<assistant>")


def test_the_command_writes_the_suite(bfcl_wheel: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.yaml"
    args = ["suite", "bfcl", "--out", str(out), "--data", str(bfcl_wheel), "-c", "simple_python", "-c",
            "irrelevance", "--limit", "5", "-q"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    suite = SuiteSpec.from_file(out)
    assert suite.category_names == ["simple_python", "irrelevance"] and suite.limit == 5
    assert suite.summaries == []  # neither summary has all its categories
    bad = CliRunner().invoke(app, ["suite", "bfcl", "--out", str(tmp_path / "c.yaml"), "--data",
                                   str(tmp_path / "missing.whl")])  # fmt: skip
    assert bad.exit_code == 2 and "missing.whl" in bad.output and "Traceback" not in bad.output
    shutil.rmtree(tmp_path / "b_tasks")
