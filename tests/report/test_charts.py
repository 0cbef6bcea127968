"""The SVG chart kit: well-formed SVG, one shape per data point, names escaped."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from soce.report import charts
from soce.report.charts import BarSeries, TrialPoint

SVG = "{http://www.w3.org/2000/svg}"
HOSTILE = ['<script>alert("x")</script>', "ft & merged", "a>b<c"]


def parse(svg: str) -> ET.Element:
    """The chart as XML (a well-formed SVG document once the namespace is declared)."""
    root = ET.fromstring(svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1))
    assert root.tag == f"{SVG}svg" and root.get("class") == "chart"
    width, height = int(root.get("width")), int(root.get("height"))
    assert root.get("viewBox") == f"0 0 {width} {height}"
    for rect in root.iter(f"{SVG}rect"):  # every box inside the chart
        x, y, w, h = (float(rect.get(k)) for k in ("x", "y", "width", "height"))
        assert 0 <= x <= x + w <= width and 0 <= y <= y + h <= height, rect.attrib
    return root


def with_class(root: ET.Element, cls: str) -> list[ET.Element]:
    return [e for e in root.iter() if cls in (e.get("class") or "").split()]


def texts(root: ET.Element) -> list[str]:
    return [t for e in root.iter() for t in (e.text, e.tail) if t and t.strip()]


def test_format_number() -> None:
    assert charts.format_number(0.12345) == "0.123"
    assert charts.format_number(0.5, digits=2, signed=True) == "+0.50"
    assert charts.format_number(-0.0001, signed=True) == "-0.000"
    for missing in (None, math.nan, math.inf, "0.5", True):
        assert charts.format_number(missing) == "n/a"
    assert charts.as_number(3) == 3.0 and charts.as_number(False) is None


@pytest.mark.parametrize(("n_rows", "n_cols"), [(1, 1), (3, 2), (20, 12)])
def test_heatmap_has_a_cell_per_value(n_rows: int, n_cols: int) -> None:
    rows = [f"model-{i}" for i in range(n_rows)]
    cols = [f"category-{j}" for j in range(n_cols)]
    matrix = [[(i + j) / (n_rows + n_cols) for j in range(n_cols)] for i in range(n_rows)]
    matrix[0][0] = None
    svg = charts.heatmap_svg(
        chart="scores-dev",
        title="dev scores",
        rows=rows,
        cols=cols,
        matrix=matrix,
        diverging=False,
        digits=3,
        outlined={(0, n_cols - 1)},
        extra_column=("average", [0.5] * n_rows),
    )
    root = parse(svg)
    assert root.get("data-chart") == "scores-dev"
    cells = with_class(root, "cell")
    assert len(cells) == n_rows * n_cols and len(with_class(root, "cell-extra")) == n_rows
    assert cells[0].get("fill") == charts.MISSING_FILL and "n/a" in texts(root)
    assert len(with_class(root, "expert-outline")) == 1


def test_correlation_heatmap_marks_weak_categories() -> None:
    names = ["live", "multi_turn", "non_live"]
    matrix = [[1.0, 0.2, -0.4], [0.2, 1.0, None], [-0.4, None, 1.0]]
    root = parse(
        charts.heatmap_svg(
            chart="correlation-pearson",
            title="Pearson",
            rows=names,
            cols=names,
            matrix=matrix,
            diverging=True,
            digits=2,
            marked={2},
        )
    )
    assert len(with_class(root, "cell")) == 9
    weak = with_class(root, "weak")
    assert len(weak) == 2 and all("* non_live" in "".join(e.itertext()) for e in weak)  # row and column
    assert sum(c.get("fill") == charts.MISSING_FILL for c in with_class(root, "cell")) == 2


def test_history_draws_each_trial_with_a_value() -> None:
    states = ["COMPLETE", "PRUNED", "FAIL", "COMPLETE", "COMPLETE"]
    objectives = [0.5, 0.45, None, 0.62, 0.6]
    trials, best = [], None
    for n, (state, value) in enumerate(zip(states, objectives, strict=True)):
        if state == "COMPLETE":
            best = value if best is None else max(best, value)
        trials.append(TrialPoint(n, state, value, best))
    root = parse(charts.history_svg(list(reversed(trials)), best_trial=3))
    assert len(with_class(root, "trial")) == 4  # the failed trial has no value
    assert len(with_class(root, "trial-complete")) == 3 and len(with_class(root, "trial-pruned")) == 1
    assert all(c.get("fill") == "none" for c in with_class(root, "trial-pruned"))
    assert len(with_class(root, "best-so-far")) == 1 and len(with_class(root, "best-trial")) == 1
    # the best-so-far line steps at each trial, left to right
    path = with_class(root, "best-so-far")[0].get("d")
    assert path.startswith("M") and path.count("H") == len(trials)


def test_weights_have_a_bar_each() -> None:
    weights = {"a": 0.5, "b": 0.3, "c": 0.2, "d": None}
    root = parse(charts.weights_svg(weights))
    bars = with_class(root, "bar")
    assert len(bars) == 4 and float(bars[3].get("width")) == 0
    assert float(bars[0].get("width")) > float(bars[1].get("width")) > float(bars[2].get("width"))


def test_grouped_bars_skip_missing_values() -> None:
    groups = ["live", "non_live", "Average"]
    series = [
        BarSeries("soup", "Soup", "#D55E00", [0.6, 0.7, 0.65]),
        BarSeries("greedy", "Greedy", "#009E73", [0.5, None, 0.5]),
    ]
    root = parse(charts.grouped_bars_svg(groups, series))
    assert len(with_class(root, "bar")) == 5
    assert len(with_class(root, "series-soup")) == 3 and len(with_class(root, "series-greedy")) == 2
    assert len(with_class(root, "legend-swatch")) == 2


def test_names_are_escaped_everywhere() -> None:
    drawn = [
        charts.heatmap_svg(
            chart="scores-dev",
            title=HOSTILE[0],
            rows=HOSTILE,
            cols=HOSTILE,
            matrix=[[0.1, 0.2, 0.3]] * 3,
            diverging=False,
            digits=3,
            extra_column=(HOSTILE[1], [0.1, 0.2, 0.3]),
        ),
        charts.weights_svg(dict.fromkeys(HOSTILE, 1 / 3)),
        charts.grouped_bars_svg(HOSTILE, [BarSeries("soup", HOSTILE[0], "#D55E00", [0.1, 0.2, 0.3])]),
        charts.history_svg([TrialPoint(0, "<bad>", 0.4, None)], best_trial=None),
    ]
    for svg in drawn:
        assert "<script" not in svg and "& " not in svg and "a>b" not in svg
        root = parse(svg)  # escaped names keep the document well formed
        assert not [e for e in root.iter() if e.tag.endswith("script")]
        shown = " ".join(texts(root))
        assert HOSTILE[0] in shown or "<bad>" in shown  # the reader sees the name as text


def test_long_names_are_shortened_but_kept_apart() -> None:
    names = [f"org/very-long-model-name-fine-tuned-on-task-{i}-with-lora-rank-64" for i in range(12)]
    root = parse(charts.weights_svg(dict.fromkeys(names, 1 / 12)))
    # a label is <text><title>full name</title>shown name</text>
    shown = [title.tail for label in root.iter(f"{SVG}text") for title in label.iter(f"{SVG}title")]
    assert len(shown) == 12 and len(set(shown)) == 12 and all(len(t) <= 32 and "…" in t for t in shown)
    assert names[0] in [e.text for e in root.iter(f"{SVG}title")]  # the full name in the tooltip
