"""A suite's summary columns: named averages over categories (BFCL's non-live and live AST accuracy),
reported beside the categories in report.json, the CLI table and report.html."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from soce.errors import SuiteError
from soce.report import render_report_html
from soce.schemas.report import Report
from soce.schemas.suite import SuiteSpec, SummarySpec
from workers.summary import result_table

DEMO = Path(__file__).parents[1] / "data" / "report-demo.json"


def suite(**summary: object) -> dict:
    return {
        "name": "s",
        "categories": [{"name": n, "tasks": [{"name": f"t_{n}"}]} for n in ("a", "b", "c")],
        "summaries": [summary],
    }


def test_plain_and_item_weighted_means() -> None:
    scores, counts = {"a": 0.5, "b": 1.0, "c": 0.0}, {"a": 10, "b": 30, "c": 5}
    assert SummarySpec(name="x", categories=["a", "b"]).value(scores, counts) == pytest.approx(0.75)
    by_items = SummarySpec(name="x", categories=["a", "b"], by_items=True)
    assert by_items.value(scores, counts) == pytest.approx((0.5 * 10 + 1.0 * 30) / 40)
    assert by_items.value(scores, {"a": 10}) is None  # a count is missing
    assert SummarySpec(name="x", categories=["a", "z"]).value(scores, counts) is None


def test_a_summary_of_unknown_categories_is_refused() -> None:
    assert SuiteSpec.parse(suite(name="ab", categories=["a", "b"])).summaries[0].name == "ab"
    with pytest.raises(SuiteError, match="summary 'ab' names unknown category 'z'"):
        SuiteSpec.parse(suite(name="ab", categories=["a", "z"]))


def test_the_table_and_page_show_the_summaries() -> None:
    report = Report.model_validate(json.loads(DEMO.read_text()))
    models = [*report.candidates, *report.baselines, "soup"]
    values = {m: 0.25 + i / 1000 for i, m in enumerate(models)}
    with_summary = report.model_copy(update={"summaries": {"live_ast": values}})
    table = result_table(with_summary)
    head = next(line for line in table.splitlines() if line.startswith("test split"))
    assert head.split()[-1] == "live_ast" and "live_ast" not in result_table(report)
    soup_line = next(line for line in table.splitlines() if line.startswith("SoCE soup"))
    assert f"{values['soup'] * 100:.1f}" in soup_line
    page = render_report_html(with_summary)
    assert 'id="summaries"' in page and 'id="summaries"' not in render_report_html(report)
