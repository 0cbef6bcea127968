"""Averaging the checkpoints of one run: order, last-k and EMA weights against numpy, the written folder,
errors, and `soce average` choosing a setting on dev."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from soce.checkpoints import Checkpoint
from soce.errors import CheckpointError, IncompatibleCheckpointsError, OutputExistsError, RecipeError
from soce.merging.averaging import (
    AveragingSetting,
    averaging_recipe,
    ema_weights,
    last_k_weights,
    order_by_step,
    search_settings,
    write_average,
)
from soce.merging.soup import MERGEKIT_FILE, RECIPE_FILE

runner = CliRunner()


def invoke(*args: object):
    from soce.cli import app

    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def make_run(make_checkpoints, tmp_path: Path, steps: list[int], *, state: bool = False, **kw) -> list[Path]:
    """Checkpoints named checkpoint-STEP (with trainer_state.json when `state`), in the order of `steps`."""
    folders = make_checkpoints(len(steps), **kw)
    run = tmp_path / f"run-{len(list(tmp_path.glob('run-*')))}"
    run.mkdir()
    out = []
    for folder, step in zip(folders, steps, strict=True):
        dest = run / f"checkpoint-{step}"
        shutil.move(folder, dest)
        if state:
            (dest / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": 1.0}))
        out.append(dest)
    return out


def tensors(folder: Path) -> dict[str, np.ndarray]:
    with Checkpoint.open(folder) as c:
        return {name: c.read_float32(name).astype(np.float64) for name in c.tensors}


# --- weights -----------------------------------------------------------------------------------------


def test_closed_form_ema_equals_the_recurrence() -> None:
    rng = np.random.default_rng(0)
    thetas = rng.standard_normal((6, 5))
    for decay in (0.1, 0.5, 0.9, 0.999):
        ema = thetas[0].copy()
        for t in thetas[1:]:
            ema = decay * ema + (1 - decay) * t
        w = ema_weights(len(thetas), decay)
        assert math.fsum(w) == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(np.asarray(w) @ thetas, ema, rtol=1e-12, atol=1e-12)
    assert last_k_weights(5, 2) == [0.0, 0.0, 0.0, 0.5, 0.5]
    assert last_k_weights(3, 3) == pytest.approx([1 / 3] * 3)


def test_search_settings_drop_duplicates() -> None:
    labels = [s.label for s in search_settings(4)]
    assert labels == ["last 1", "last 2", "last 4", "ema 0.25", "ema 0.5", "ema 0.75", "ema 0.9"]
    assert [s.label for s in search_settings(2, [AveragingSetting.ema(0.6)])] == [
        "last 1",
        "last 2",
        "ema 0.25",
        "ema 0.75",
        "ema 0.9",
        "ema 0.6",
    ]  # with two checkpoints, ema 0.5 is last 2


# --- order -------------------------------------------------------------------------------------------


def test_order_from_trainer_state_beats_names_and_given(make_checkpoints, tmp_path: Path) -> None:
    run = make_run(make_checkpoints, tmp_path, [300, 100, 200], state=True)
    # the global steps say otherwise than the names: trainer_state.json wins
    for folder, step in zip(run, [5, 30, 20], strict=True):
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    order = order_by_step(run)
    assert order.source == "trainer_state"
    assert order.checkpoints == (run[0], run[2], run[1]) and order.steps == (5, 20, 30)
    assert "trainer_state.json global_step: 5, 20, 30" in order.describe()


def test_order_from_names_is_numeric(make_checkpoints, tmp_path: Path) -> None:
    run = make_run(make_checkpoints, tmp_path, [1000, 200, 30])
    order = order_by_step(run)
    assert order.source == "name" and order.steps == (30, 200, 1000)
    assert order.checkpoints == (run[2], run[1], run[0])
    # trainer_state.json in only some folders: names decide
    (run[0] / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    assert order_by_step(run).source == "name"


def test_order_as_given_without_steps(make_checkpoints, tmp_path: Path) -> None:
    folders = make_checkpoints(3)
    named = []
    for folder, name in zip(folders, ["last", "first", "middle"], strict=True):
        named.append(folder.rename(folder.parent / name))
    order = order_by_step(named)
    assert order.source == "given" and order.checkpoints == tuple(named)
    assert order.describe().startswith("as given")


def test_order_errors_name_the_file_and_field(make_checkpoints, tmp_path: Path) -> None:
    run = make_run(make_checkpoints, tmp_path, [100, 200], state=True)
    (run[1] / "trainer_state.json").write_text(json.dumps({"global_step": "two hundred"}))
    with pytest.raises(CheckpointError, match=r"checkpoint-200/trainer_state.json: field 'global_step'"):
        order_by_step(run)
    (run[1] / "trainer_state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot be read as JSON"):
        order_by_step(run)
    (run[1] / "trainer_state.json").write_text(json.dumps({"global_step": 100}))
    with pytest.raises(RecipeError, match="both at step 100"):
        order_by_step(run)
    with pytest.raises(RecipeError, match="at least two"):
        order_by_step(run[:1])
    with pytest.raises(RecipeError, match="listed twice"):
        order_by_step([run[0], run[0]])
    with pytest.raises(CheckpointError, match="no such file"):
        order_by_step([run[0], tmp_path / "nope"])


# --- written averages against numpy --------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 4])
def test_last_k_is_the_mean_of_the_last_k(make_checkpoints, tmp_path: Path, k: int) -> None:
    run = make_run(make_checkpoints, tmp_path, [400, 100, 300, 200], spread=0.5)
    order = order_by_step(run)
    soup = write_average(order, AveragingSetting.last(k), tmp_path / "avg")
    got = tensors(soup.path)
    inputs = [tensors(p) for p in order.checkpoints]
    for name, value in got.items():
        want = np.mean([t[name] for t in inputs[-k:]], axis=0)
        np.testing.assert_allclose(value, want, rtol=1e-6, atol=1e-7, err_msg=name)
    if k == 1:  # the last checkpoint itself, bit for bit
        last = tensors(order.checkpoints[-1])
        assert all(np.array_equal(got[n], last[n]) for n in got)


@pytest.mark.parametrize("decay", [0.3, 0.9])
def test_ema_equals_the_recurrence_on_the_tensors(make_checkpoints, tmp_path: Path, decay: float) -> None:
    run = make_run(make_checkpoints, tmp_path, [20, 10, 40, 30], state=True, spread=0.5)
    order = order_by_step(run)
    soup = write_average(order, AveragingSetting.ema(decay), tmp_path / "ema")
    got = tensors(soup.path)
    inputs = [tensors(p) for p in order.checkpoints]  # steps 10, 20, 30, 40
    for name, value in got.items():
        ema = inputs[0][name]
        for t in inputs[1:]:
            ema = decay * ema + (1 - decay) * t[name]
        np.testing.assert_allclose(value, ema, rtol=1e-6, atol=1e-7, err_msg=name)


def test_written_folder_is_a_soup_with_card_and_recipes(make_checkpoints, tmp_path: Path) -> None:
    run = make_run(make_checkpoints, tmp_path, [100, 200, 300], state=True)
    order = order_by_step(run)
    soup = write_average(order, AveragingSetting.ema(0.5), tmp_path / "avg")
    for f in ("config.json", "tokenizer.json", "README.md", RECIPE_FILE, MERGEKIT_FILE, "model.safetensors"):
        assert (soup.path / f).is_file(), f
    card = (soup.path / "README.md").read_text()
    assert "## Ingredients" in card and "## Checkpoint averaging" in card
    assert "ordered by trainer_state.json global_step: 100, 200, 300" in card
    assert "EMA with decay 0.5" in card and "| 1 | `" in card and "| 0.25 |" in card
    recipe = yaml.safe_load((soup.path / RECIPE_FILE).read_text())
    assert recipe["method"] == "linear"
    assert [Path(c["path"]).name for c in recipe["candidates"]] == [
        "checkpoint-100",
        "checkpoint-200",
        "checkpoint-300",
    ]
    assert [c["weight"] for c in recipe["candidates"]] == [0.25, 0.25, 0.5]
    # the recipe replays with `soce merge` into the same tensors
    replay = invoke("merge", soup.path / RECIPE_FILE, tmp_path / "replay", "--quiet")
    assert replay.exit_code == 0, replay.output
    assert (tmp_path / "replay" / "model.safetensors").read_bytes() == (
        soup.path / "model.safetensors"
    ).read_bytes()


def test_last_one_is_written_as_a_two_ingredient_soup(make_checkpoints, tmp_path: Path) -> None:
    run = make_run(make_checkpoints, tmp_path, [1, 2, 3])
    recipe = averaging_recipe(order_by_step(run), AveragingSetting.last(1))
    assert [(Path(c.path).name, c.weight) for c in recipe.candidates] == [
        ("checkpoint-2", 0.0),
        ("checkpoint-3", 1.0),
    ]
    recipe = averaging_recipe(order_by_step(run), AveragingSetting.last(2))
    assert [Path(c.path).name for c in recipe.candidates] == ["checkpoint-2", "checkpoint-3"]


# --- errors ------------------------------------------------------------------------------------------


def test_bad_settings_are_refused(make_checkpoints, tmp_path: Path) -> None:
    run = make_run(make_checkpoints, tmp_path, [1, 2, 3])
    order = order_by_step(run)
    with pytest.raises(RecipeError, match="--last 4: choose k between 1 and the 3"):
        write_average(order, AveragingSetting.last(4), tmp_path / "x")
    with pytest.raises(RecipeError, match="--last 0"):
        write_average(order, AveragingSetting.last(0), tmp_path / "x")
    for decay in (0.0, 1.0, 1.5, -0.2, float("nan")):
        with pytest.raises(RecipeError, match="strictly between 0 and 1"):
            write_average(order, AveragingSetting.ema(decay), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_incompatible_checkpoints_are_refused(make_checkpoints, tmp_path: Path) -> None:
    (a,) = make_run(make_checkpoints, tmp_path, [1])
    (b,) = make_run(make_checkpoints, tmp_path, [2], hidden=64)
    with pytest.raises(IncompatibleCheckpointsError, match="shape"):
        write_average(order_by_step([a, b]), AveragingSetting.last(2), tmp_path / "x")


def test_cli_errors_are_one_line(make_checkpoints, tmp_path: Path) -> None:
    run = make_run(make_checkpoints, tmp_path, [1, 2, 3])
    out = tmp_path / "avg"
    cases = [
        ([run[0], out, "--last", 1], "at least two"),
        ([*run, out, "--last", 5], "--last 5"),
        ([*run, out, "--ema", 1.0], "strictly between 0 and 1"),
        ([*run, out, "--ema", 0], "strictly between 0 and 1"),
        ([*run, out], "choose one of --last K or --ema DECAY"),
        ([*run, out, "--last", 2, "--ema", 0.5], "choose one of"),
        ([*run, out, "--last", 2, "--evaluator", "lm_eval"], "--evaluator goes with --suite"),
        ([*run, out, "--suite", tmp_path / "none.yaml"], "none.yaml"),
        ([*run, out, "--suite", tmp_path / "none.yaml", "--evaluator", "nope"], "none.yaml"),
    ]
    for args, message in cases:
        result = invoke("average", *args)
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.startswith("error: ") and message in result.stderr, (args, result.stderr)
    assert not out.exists()
    out.mkdir()
    result = invoke("average", *run, out, "--last", 2)
    assert result.exit_code == 2 and "--force" in result.stderr


def test_cli_writes_the_average_and_says_the_order(make_checkpoints, tmp_path: Path) -> None:
    run = make_run(make_checkpoints, tmp_path, [30, 10, 20])
    result = invoke("average", *run, tmp_path / "avg", "--last", 2, "--quiet")
    assert result.exit_code == 0, result.output
    assert "ordered by the step in the folder name: 10, 20, 30" in result.output
    assert "uniform average of the last 2 of 3" in result.output
    recipe = yaml.safe_load((tmp_path / "avg" / RECIPE_FILE).read_text())
    assert [Path(c["path"]).name for c in recipe["candidates"]] == ["checkpoint-20", "checkpoint-30"]
    with pytest.raises(OutputExistsError):
        write_average(order_by_step(run), AveragingSetting.last(2), tmp_path / "avg")


# --- choosing on dev -----------------------------------------------------------------------------------


def _dev_average(folder: Path, suite_file: Path) -> float:
    from evaluators import LmEvalEvaluator
    from soce.schemas.suite import SuiteSpec

    return LmEvalEvaluator().score(folder, SuiteSpec.from_file(suite_file), "dev").average


def _table(output: str) -> dict[str, float]:
    rows = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in ("last", "ema"):
            rows[f"{parts[0]} {parts[1]}"] = float(parts[2])
    return rows


def test_cli_suite_chooses_on_dev_with_a_task_folder(make_checkpoints, tmp_path: Path, one_thread) -> None:
    from tests.evaluators.task_folder import write_zoo_tasks

    tasks = write_zoo_tasks(tmp_path / "tasks")
    run = make_run(make_checkpoints, tmp_path, [100, 200, 300], state=True, spread=2.0)
    for evaluator, message in (
        ("nope", "unknown evaluator 'nope'"),
        ("external", "cannot score an in-memory"),
    ):
        refused = invoke(
            "average", *run, tmp_path / "x", "--suite", tasks / "suite.yaml", "--evaluator", evaluator
        )
        assert refused.exit_code == 2 and message in refused.stderr, refused.stderr
    result = invoke("average", *run, tmp_path / "avg", "--suite", tasks / "suite.yaml", "--quiet")
    assert result.exit_code == 0, result.output
    table = _table(result.output)
    assert list(table) == ["last 1", "last 2", "last 3", "ema 0.25", "ema 0.5", "ema 0.75", "ema 0.9"]
    chosen = next(line.split()[:2] for line in result.output.splitlines() if "<- chosen" in line)
    best = max(table.values())
    assert table[" ".join(chosen)] == best
    assert "arithmetic" in result.output and "strings" in result.output
    card = (tmp_path / "avg" / "README.md").read_text()
    assert "Settings compared on dev" in card and "(chosen)" in card
    # the folder written is the model that was scored: the same dev average from disk
    assert _dev_average(tmp_path / "avg", tasks / "suite.yaml") == pytest.approx(best, abs=5e-5)


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cli_suite_on_the_zoo_trajectory(tiny_zoo: Path, tmp_path: Path, one_thread) -> None:
    """The zoo's base, instruct model and a fine-tune are one training trajectory (steps 400, 480, 540)."""
    from soce.zoo.build import candidate_paths

    run = []
    for step, folder in ((400, tiny_zoo / "base"), (480, tiny_zoo / "instruct"), (540, None)):
        src = folder or candidate_paths(tiny_zoo)[0]
        dest = tmp_path / "run" / f"checkpoint-{step}"
        shutil.copytree(src, dest)
        run.append(dest)
    result = invoke(
        "average", *run, tmp_path / "avg", "--suite", tiny_zoo / "suite.yaml", "--evaluator", "lm_eval", "-q"
    )
    assert result.exit_code == 0, result.output
    table = _table(result.output)
    assert len(table) == 7 and len(set(table.values())) > 1, table  # the settings differ on dev
    assert _dev_average(tmp_path / "avg", tiny_zoo / "suite.yaml") == pytest.approx(
        max(table.values()), abs=5e-5
    )
