"""The external evaluator: scores imported from CSV and JSON, and malformed files named precisely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluators import ExternalScores, build_evaluator
from soce.errors import ScoreFileError
from tests.evaluators.task_folder import Zoo

HEADER = "candidate,task,category,score,stderr,n\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_task_rows_are_aggregated_into_categories(tmp_path: Path, zoo: Zoo) -> None:
    path = write(
        tmp_path,
        "scores.csv",
        HEADER + "cand-a,zoo_add_mc,,0.5,0.1,40\ncand-a,zoo_rev_gen,,0.25,,\ncand-b,,arithmetic,0.7,,\n",
    )
    got = ExternalScores(scores_file=path).score("cand-a", zoo.suite, "dev")
    assert got.evaluator == "external" and got.candidate == "cand-a"
    assert got.tasks["zoo_add_mc"].model_dump() == {
        "task": "zoo_add_mc",
        "metric": "acc,none",
        "value": 0.5,
        "stderr": 0.1,
        "n": 40,
        "cached": False,
    }
    assert got.categories["arithmetic"].value == 0.5 and got.categories["strings"].value == 0.25
    assert got.average == pytest.approx(0.375)


def test_json_category_rows_match_a_checkpoint_folder(tmp_path: Path, zoo: Zoo) -> None:
    folder = zoo.candidates[0]
    rows = [
        {"candidate": folder.name, "category": "arithmetic", "score": 0.6, "stderr": 0.05, "n": 100},
        {"candidate": folder.name, "category": "strings", "score": "0.2", "split": "dev"},
        {"candidate": folder.name, "category": "strings", "score": 0.9, "split": "test"},
    ]
    path = write(tmp_path, "scores.json", json.dumps({"scores": rows}))
    evaluator = build_evaluator("external", scores_file=path)
    dev, test = evaluator.score(folder, zoo.suite, "dev"), evaluator.score(folder, zoo.suite, "test")
    assert dev.tasks == {} and dev.categories["arithmetic"].stderr == 0.05
    assert (dev.categories["strings"].value, test.categories["strings"].value) == (0.2, 0.9)
    assert dev.average == pytest.approx(0.4)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "candidate,task,value\na,zoo_add_mc,1\n",
            "missing column(s) score (columns: candidate, task, value)",
        ),
        ("candidate,score\na,1\n", "missing column(s) task or category"),
        (HEADER + "a,zoo_add_mc,,high,,\n", "line 2: field 'score' is not a finite number ('high')"),
        (HEADER + "a,zoo_add_mc,,nan,,\n", "line 2: field 'score' is not a finite number ('nan')"),
        (HEADER + "a,zoo_add_mc,,0.5,,2.5\n", "line 2: field 'n' is not a non-negative integer ('2.5')"),
        (HEADER + ",zoo_add_mc,,0.5,,\n", "line 2: missing field 'candidate'"),
        (
            HEADER + "a,zoo_add_mc,arithmetic,0.5,,\n",
            "line 2: give exactly one of the fields 'task' or 'category'",
        ),
        (HEADER + "a,zoo_nope,,0.5,,\n", "line 2: field 'task': 'zoo_nope' is not a task of suite 'tiny'"),
        (HEADER + "a,,maths,0.5,,\n", "line 2: field 'category': 'maths' is not a category of suite 'tiny'"),
        (
            HEADER + "a,zoo_add_mc,,0.5,,\na,zoo_add_mc,,0.6,,\n",
            "line 3: duplicate score for 'a' task 'zoo_add_mc' (first given at",
        ),
        (HEADER + "a,zoo_add_mc,,0.5,,,9\n", "line 2: more values than columns"),
        (HEADER, "holds no score rows"),
        (
            HEADER + "a,zoo_add_mc,,0.5,,\n",
            "no dev score for candidate 'a' in category 'strings' (neither the category nor its task(s) "
            "zoo_rev_gen)",
        ),
        (
            HEADER + "a,,arithmetic,0.5,,\na,zoo_add_mc,,0.5,,\na,zoo_rev_gen,,0.5,,\n",
            "category 'arithmetic' of 'a' is scored both directly and through its task(s) zoo_add_mc",
        ),
        (HEADER + "b,zoo_add_mc,,0.5,,\n", "no dev scores for candidate 'a' (it has: b)"),
    ],
)
def test_malformed_csv_files_name_file_row_and_field(
    tmp_path: Path, zoo: Zoo, text: str, message: str
) -> None:
    path = write(tmp_path, "scores.csv", text)
    with pytest.raises(ScoreFileError) as err:
        ExternalScores(scores_file=path).score("a", zoo.suite, "dev")
    assert str(path) in str(err.value) and message in str(err.value)


@pytest.mark.parametrize(
    "data, message",
    [
        ("{not json", "not valid JSON"),
        ({"rows": []}, "expected a list of score rows"),
        ([["a", "zoo_add_mc", 0.5]], "row 1: a score row is an object"),
        ([{"candidate": "a", "task": "zoo_add_mc"}], "row 1: missing field 'score'"),
        (
            [{"candidate": "a", "task": "zoo_add_mc", "score": True}],
            "row 1: field 'score' is not a finite number",
        ),
        (
            [{"candidate": "a", "task": "zoo_add_mc", "score": 1, "model": "x"}],
            "row 1: unknown field(s) 'model'",
        ),
        (
            [{"candidate": "a", "task": "zoo_add_mc", "score": 1, "split": "val"}],
            "row 1: field 'split': 'val'",
        ),
    ],
)
def test_malformed_json_files(tmp_path: Path, zoo: Zoo, data: object, message: str) -> None:
    path = write(tmp_path, "scores.json", data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(ScoreFileError) as err:
        ExternalScores(scores_file=path).score("a", zoo.suite, "dev")
    assert str(path) in str(err.value) and message in str(err.value)


def test_a_missing_score_file(tmp_path: Path) -> None:
    with pytest.raises(ScoreFileError, match="no such score file"):
        ExternalScores(scores_file=tmp_path / "nope.csv")
    with pytest.raises(ScoreFileError, match="needs a score file"):
        ExternalScores()
