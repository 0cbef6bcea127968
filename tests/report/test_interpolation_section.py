"""The report's interpolation section: the curve's chart and table, or why there is none."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from soce.report import render_report_html
from soce.report.interpolation_chart import interpolation_svg
from soce.schemas.report import Report
from tests.report.report_pages import Page

FIXTURE = Path(__file__).parents[1] / "data" / "report-demo.json"


def curve(categories: list[str], averages: list[float | None]) -> dict[str, Any]:
    ts = [i / (len(averages) - 1) for i in range(len(averages))]
    return {
        "a": "arithmetic-expert",
        "b": "strings-expert",
        "a_path": "/zoo/candidates/arithmetic-expert",
        "b_path": "/zoo/candidates/strings-expert",
        "suite": "demo",
        "split": "dev",
        "points": [
            {"t": t, "categories": {c: (v or 0.0) + 0.01 * k for k, c in enumerate(categories)}, "average": v}
            for t, v in zip(ts, averages, strict=True)
        ],
        "ends": [averages[0], averages[-1]],
        "barrier": 0.3,
        "barrier_t": 0.5,
        "category_barriers": dict.fromkeys(categories, 0.3),
        "dip": 0.2,
        "threshold": 0.05,
        "linearly_connected": False,
        "conclusion": "not linearly connected: at t=0.50 the dev average lies 0.300 below the line",
    }


def page_of(report: dict[str, Any]) -> tuple[str, Page]:
    text = render_report_html(Report.model_validate(report))
    page = Page(text)
    assert page.problems == [] and "http://" not in text and "https://" not in text
    return text, page


def test_the_curve_is_drawn_with_its_table_and_conclusion() -> None:
    report = json.loads(FIXTURE.read_text())
    report["interpolation"] = curve(report["categories"], [0.6, 0.5, 0.2, 0.45, 0.4])
    text, page = page_of(report)
    chart = page.chart("interpolation")
    assert chart.classes["point"] == 5 and chart.classes["chord"] == 1 and chart.classes["barrier"] == 1
    assert chart.classes["curve"] == len(report["categories"]) + 1  # a line per category and the average
    assert chart.classes["curve-average"] == 1
    assert 'href="#interpolation"' in text and "not linearly connected: at t=0.50" in text
    section = text[text.index('<section id="interpolation">') :]
    section = section[: section.index("</section>")]
    assert section.count("<tr>") == 1 + 5  # the head and a row per point
    assert "+0.300" in section  # the midpoint lies 0.3 below the straight line from 0.6 to 0.4
    # a chart the page draws from the Report object and from its JSON alike
    assert render_report_html(report) == render_report_html(Report.model_validate(report))


@pytest.mark.parametrize(
    ("points", "note"), [(0, "interpolation_points: 0"), (5, "fewer than two ingredients")]
)
def test_without_a_curve_the_section_says_why(points: int, note: str) -> None:
    report = json.loads(FIXTURE.read_text())
    report["recipe"]["interpolation_points"] = points
    text, page = page_of(report)
    assert "interpolation" not in [c.name for c in page.charts] and note in text


def test_a_missing_value_breaks_the_line_and_no_gap_draws_no_barrier() -> None:
    svg = interpolation_svg(
        [0.0, 0.5, 1.0], {"x": [0.1, None, 0.3]}, [0.2, 0.5, 0.3], a="<a>", b="b" * 80, split="dev"
    )
    page = Page(svg)
    chart = page.chart("interpolation")
    assert chart.classes["barrier"] == 0 and chart.classes["point"] == 3
    assert chart.classes["curve"] == 3  # the average, and the category's two pieces around the gap
    assert "&lt;a&gt;" in svg and "b" * 80 in svg  # escaped; the long name kept in a tooltip
