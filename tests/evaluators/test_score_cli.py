"""`soce score`: the candidates x categories matrix on stdout, JSON and CSV on disk, cache hits
reported, and one clear line (exit 2) for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from soce.cli import app
from soce.config import get_settings
from tests.evaluators.task_folder import Zoo

runner = CliRunner()


@pytest.fixture(autouse=True)
def own_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("SOCE_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite'}")
    for var in ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.setenv(var, "0")  # restored after the test; the command sets them
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def invoke(*args: object):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def test_external_scores_print_and_write_the_matrix(tmp_path: Path, zoo: Zoo) -> None:
    scores = tmp_path / "board.csv"
    scores.write_text(
        "candidate,category,score\na,arithmetic,0.5\na,strings,0.1\nb,arithmetic,0.3\nb,strings,0.4\n"
    )
    out = tmp_path / "out"
    result = invoke("score", "--suite", zoo.suite_file, "--split", "dev", "--evaluator", "external")
    assert result.exit_code == 2  # no CHECKPOINTS
    args = ["--evaluator", "external", "--scores", scores, "--out", out, "-q", "a", "b"]
    result = invoke("score", "--suite", zoo.suite_file, "--split", "test", *args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["candidate", "arithmetic", "strings", "average"]
    assert lines[1].split() == ["a", "0.5000", "0.1000", "0.3000"]
    assert lines[2].split() == ["b", "0.3000", "0.4000", "0.3500"]
    assert f"wrote {out / 'tiny-test'}.json and {out / 'tiny-test'}.csv" in result.output
    matrix = json.loads((out / "tiny-test.json").read_text())
    assert matrix["candidates"] == ["a", "b"] and matrix["values"] == [[0.5, 0.1], [0.3, 0.4]]
    assert (out / "tiny-test.csv").read_text().splitlines()[1] == "a,0.5,0.1,0.3"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--split", "val"], "error: --split must be dev or test, not 'val'"),
        (["--split", "dev", "--evaluator", "helm"], "error: unknown evaluator 'helm'"),
        (["--split", "dev", "--evaluator", "external"], "error: the external evaluator needs a score file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(zoo: Zoo, args: list[str], message: str) -> None:
    result = invoke("score", "--suite", zoo.suite_file, *args, "a")
    assert result.exit_code == 2
    assert result.output.strip().startswith(message) and len(result.output.strip().splitlines()) == 1


def test_malformed_score_file_exits_2(tmp_path: Path, zoo: Zoo) -> None:
    scores = tmp_path / "board.csv"
    scores.write_text("candidate,task,score\na,zoo_add_mc,lots\n")
    result = invoke(
        "score",
        "--suite",
        zoo.suite_file,
        "--split",
        "dev",
        "--evaluator",
        "external",
        "--scores",
        scores,
        "a",
    )
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {scores}, line 2: field 'score' is not a finite number ('lots')"


@pytest.mark.usefixtures("one_thread")
def test_lm_eval_scores_are_cached_between_runs(tmp_path: Path, zoo: Zoo) -> None:
    args = [
        "score",
        "--suite",
        zoo.suite_file,
        "--split",
        "dev",
        "--batch-size",
        "8",
        "--out",
        tmp_path,
        "-q",
    ]
    first = invoke(*args, zoo.candidates[0])
    assert first.exit_code == 0, first.output
    assert "0 of 2 task scores came from the score cache" in first.output
    second = invoke(*args, zoo.candidates[0])
    assert "2 of 2 task scores came from the score cache" in second.output
    assert "(2/2 cached)" in second.output

    def row(output: str) -> list[str]:  # stderr (bars of already imported libraries) is mixed in here
        return next(line for line in output.splitlines() if line.startswith("candidate-0")).split()[:4]

    assert row(first.output) == row(second.output)


@pytest.mark.usefixtures("one_thread")
def test_folders_of_one_name_are_told_apart_by_more_of_their_path(tmp_path: Path, zoo: Zoo) -> None:
    import shutil

    soups = [tmp_path / "runs" / parent / "soup" for parent in ("a", "b")]
    for source, soup in zip(zoo.candidates, soups, strict=True):
        shutil.copytree(source, soup)
    out = tmp_path / "out"
    args = ["score", "--suite", zoo.suite_file, "--split", "dev", "--device", "cpu", "--out", out, "-q"]
    result = invoke(*args, *soups, soups[0])  # given twice: scored once
    assert result.exit_code == 0, result.output
    rows = [line.split()[0] for line in result.output.splitlines() if line.startswith(("a/", "b/", "/"))]
    assert rows == ["a/soup", "b/soup"]
    assert "note: names lengthened to tell apart folders of one name: a/soup, b/soup" in result.output
    matrix = json.loads((out / "tiny-dev.json").read_text())
    assert matrix["candidates"] == ["a/soup", "b/soup"]
    assert [s["candidate"] for s in matrix["scores"]] == ["a/soup", "b/soup"]
    csv_rows = [line.split(",")[0] for line in (out / "tiny-dev.csv").read_text().splitlines()[1:]]
    assert csv_rows == ["a/soup", "b/soup"]
