"""What `soce run` shows and writes besides the soup: a progress bar per stage, report files readable like
the soup's, the report's timings, and a rerun that finds every soup's scores in the score cache."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from soce.cli import app
from tests.workers.test_run import write_recipe

pytestmark = pytest.mark.slow

runner = CliRunner()
REPORT_FILES = ("report.json", "report.html", "scores-dev.csv", "scores-test.csv", "scores-dev-select.csv")


@pytest.fixture(scope="module")
def shown_run(
    tiny_zoo: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess]:
    """`soce run` in a process of its own, bars on (stderr is not a terminal, as under a CI runner)."""
    folder = tmp_path_factory.mktemp("shown")
    recipe = write_recipe(folder, tiny_zoo, n_trials=3, bootstrap_iterations=200)
    soce = Path(sys.executable).with_name("soce")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TQDM_DISABLE", None)
    proc = subprocess.run(
        [str(soce), "run", str(recipe)], capture_output=True, text=True, env=env, cwd=folder, timeout=900
    )
    return recipe, proc


def test_each_stage_shows_a_progress_bar(shown_run) -> None:
    _, proc = shown_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.replace("\r", "\n").splitlines()
    for stage in ("score dev", "score test", "search tpe", "baselines", "select", "test"):
        assert any(line.startswith(stage) and "100%|" in line for line in lines), (stage, proc.stderr[-3000:])
    assert "Building contexts" not in proc.stderr  # lm-eval's own bars and notes stay quiet without -v


def test_report_files_are_readable_like_the_soups(shown_run) -> None:
    recipe, proc = shown_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = recipe.parent / "out"
    soup_mode = stat.S_IMODE((out / "soup" / "config.json").stat().st_mode)
    assert soup_mode & 0o044, "the umask of this test run hides files from group and others"
    assert {name: stat.S_IMODE((out / name).stat().st_mode) for name in REPORT_FILES} == dict.fromkeys(
        REPORT_FILES, soup_mode
    )


def test_report_times_the_finalize_step_and_the_whole_job(shown_run) -> None:
    recipe, proc = shown_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    seconds = json.loads((recipe.parent / "out" / "report.json").read_text())["seconds"]
    assert set(seconds) >= {"score", "analyse", "search", "select", "finalize", "total"}
    assert 0 < seconds["select"] < seconds["finalize"]  # select is part of the finalize step
    assert seconds["total"] >= seconds["score"] + seconds["analyse"] + seconds["search"] + seconds["finalize"]


def test_a_rerun_scores_no_soup_again(shown_run, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every soup's scores were stored by the first run: the second evaluates none on test or on the
    selection part, and reports the same numbers."""
    from evaluators import LmEvalEvaluator
    from workers.resident import ResidentSoup

    recipe, proc = shown_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = json.loads((recipe.parent / "out" / "report.json").read_text())
    evaluated: list[tuple[str, str | None]] = []  # (split, part) of each soup evaluation
    soup_scores, folder_scores = ResidentSoup.score_tasks, LmEvalEvaluator.score_tasks

    def counted_soup(self, weights, split, *args, **kwargs):
        part = kwargs.get("part")
        evaluated.append((split, part.name if part is not None else None))
        return soup_scores(self, weights, split, *args, **kwargs)

    def counted_folder(self, checkpoint, suite, split, *args, **kwargs):
        evaluated.append((f"{split} from {Path(checkpoint).name}", None))
        return folder_scores(self, checkpoint, suite, split, *args, **kwargs)

    ensemble_scores = ResidentSoup.score_ensemble

    def counted_ensemble(self, labels, split, *args, **kwargs):
        evaluated.append((f"{split} ensemble", None))
        return ensemble_scores(self, labels, split, *args, **kwargs)

    monkeypatch.setattr(ResidentSoup, "score_tasks", counted_soup)
    monkeypatch.setattr(ResidentSoup, "score_ensemble", counted_ensemble)
    monkeypatch.setattr(LmEvalEvaluator, "score_tasks", counted_folder)
    result = runner.invoke(app, ["run", str(recipe), "-q"])
    assert result.exit_code == 0, result.output
    assert [e for e in evaluated if e[0].startswith("test") or e[1] == "select"] == []
    assert evaluated == []  # nor the output ensemble, nor the interpolation curve's points on dev
    after = json.loads((recipe.parent / "out" / "report.json").read_text())
    assert after["soup"]["test"] == before["soup"]["test"]
    assert after["soup"]["intervals"] == before["soup"]["intervals"]
    assert after["soup"]["test_average_from_disk"] == before["soup"]["test_average_from_disk"]
    assert {n: b["test"] for n, b in after["baselines"].items()} == {
        n: b["test"] for n, b in before["baselines"].items()
    }
    assert after["selection"]["contenders"] == before["selection"]["contenders"]
    assert after["decision"] == before["decision"]
    assert after["interpolation"]["points"] == before["interpolation"]["points"]
