"""`soce interpolate`: the curve's table, text plot and conclusion; its JSON and SVG files; clear errors."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from soce.cli import app
from soce.schemas.interpolation import InterpolationCurve
from soce.zoo import LlamaShape, make_related_checkpoints
from tests.evaluators.task_folder import write_zoo_tasks
from tests.workers.test_interpolate import DippingSoup

runner = CliRunner()
SHAPE = LlamaShape(hidden=32, layers=2, intermediate=64)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = write_zoo_tasks(tmp_path_factory.mktemp("cli-interp"))
    return root / "suite.yaml", make_related_checkpoints(root / "candidates", 2, shape=SHAPE, spread=3.0)


def interpolate(suite: Path, a: Path, b: Path, out: Path, *args: str):
    files = ["--out", str(out / "curve.json"), "--plot", str(out / "curve.svg")]
    return runner.invoke(app, ["interpolate", str(a), str(b), "--suite", str(suite), *files, "-q", *args])


def test_interpolate_prints_the_curve_and_writes_json_and_svg(zoo, tmp_path: Path) -> None:
    suite, (a, b) = zoo
    result = interpolate(suite, a, b, tmp_path, "--points", "3")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:1] == ["t"])
    assert lines[head].split() == ["t", "arithmetic", "strings", "average"]
    assert [line.split()[0] for line in lines[head + 1 : head + 4]] == ["0.000", "0.500", "1.000"]
    assert "t=0 (A)" in result.output and "t=1 (B)" in result.output and "*" in result.output
    curve = InterpolationCurve.model_validate_json((tmp_path / "curve.json").read_text())
    assert [p.t for p in curve.points] == [0.0, 0.5, 1.0] and curve.a_path == str(a.resolve())
    # each printed row is the curve's point
    for line, point in zip(lines[head + 1 : head + 4], curve.points, strict=True):
        values = [float(v) for v in line.split()[1:]]
        assert values == pytest.approx([*point.categories.values(), point.average], abs=5e-5)
    assert f"barrier {curve.barrier:.4f} at t={curve.barrier_t:.2f}" in result.output
    assert curve.conclusion in result.output
    svg = (tmp_path / "curve.svg").read_text()
    root = ET.fromstring(svg.split("\n", 1)[1])  # well-formed, a standalone SVG document
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.get("data-chart") == "interpolation"
    ns = {"s": "http://www.w3.org/2000/svg"}
    assert len(root.findall(".//s:circle[@class='point']", ns)) == 3
    assert len(root.findall(".//s:path[@class='curve']", ns)) >= 1  # a line per category with values
    assert f"wrote {tmp_path / 'curve.json'} and {tmp_path / 'curve.svg'}" in result.output


def test_a_dip_is_said_to_be_no_linear_connection(zoo, tmp_path: Path, monkeypatch) -> None:
    suite, (a, b) = zoo
    monkeypatch.setattr("workers.interpolate.ResidentSoup", DippingSoup)
    result = interpolate(suite, a, b, tmp_path, "--points", "5")
    assert result.exit_code == 0, result.output
    assert "barrier 0.3000 at t=0.50" in result.output
    assert "not linearly connected: at t=0.50 the dev average lies 0.300 below" in result.output
    data = json.loads((tmp_path / "curve.json").read_text())
    assert data["linearly_connected"] is False and data["barrier"] == pytest.approx(0.3)
    assert 'class="barrier"' in (tmp_path / "curve.svg").read_text()
    # a larger threshold reads the same curve as connected
    result = interpolate(suite, a, b, tmp_path, "--points", "5", "--threshold", "0.4")
    assert result.exit_code == 0 and "linearly connected on dev" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--points", "1"], "--points must be from 2 (the two ends) to 101, not 1"),
        (["--points", "500"], "--points must be from 2 (the two ends) to 101, not 500"),
        (["--split", "train"], "--split must be dev or test, not 'train'"),
        (["--evaluator", "external"], "--evaluator external reads scores from files"),
        (["--evaluator", "nope"], "unknown evaluator 'nope'"),
        (["--threshold", "-1"], "--threshold is a score difference from 0 to 1"),
    ],
)
def test_bad_options_are_clear_errors(zoo, tmp_path: Path, args: list[str], message: str) -> None:
    suite, (a, b) = zoo
    result = interpolate(suite, a, b, tmp_path, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "curve.json").exists()


def test_checkpoints_that_cannot_be_interpolated(zoo, tmp_path: Path) -> None:
    suite, (a, _) = zoo
    (wide,) = make_related_checkpoints(
        tmp_path / "wide", 1, shape=LlamaShape(hidden=48, layers=2, intermediate=64)
    )
    result = interpolate(suite, a, wide, tmp_path)
    assert result.exit_code == 2 and "shape" in result.output and str(wide) in result.output
    result = interpolate(suite, a, a, tmp_path)
    assert result.exit_code == 2 and "the same folder" in result.output
    result = interpolate(suite, a, tmp_path / "missing", tmp_path)
    assert result.exit_code == 2 and "missing: no such file or folder" in result.output
    result = interpolate(tmp_path / "none.yaml", a, wide, tmp_path)
    assert result.exit_code == 2 and "none.yaml" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "curve.json").exists()


def test_help_names_the_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "interpolate" in result.output
    result = runner.invoke(app, ["interpolate", "--help"])
    assert result.exit_code == 0 and "--points" in result.output and "--plot" in result.output
