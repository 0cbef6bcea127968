"""The typed Report: a report.json written by a real run validates, and holds exactly the Report's fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from soce.schemas.report import Report, report_files, soup_scores, stored_report

FIXTURE = Path(__file__).parents[1] / "data" / "report-demo.json"


def test_a_real_runs_report_is_a_valid_report_and_nothing_else():
    data = json.loads(FIXTURE.read_text())
    report = Report.model_validate(data)
    assert report.as_json() == data  # every key the run wrote is a field, and round-trips unchanged
    assert list(data)[:2] == ["verdict", "decision"]
    assert report.decision.kind == "soup" and report.verdict.startswith("use the soup: ")
    assert report.soup.source == report.selection.chosen and report.soup.recommended


def test_unknown_or_missing_fields_are_refused_where_the_report_is_made():
    data = json.loads(FIXTURE.read_text())
    with pytest.raises(ValidationError, match="extra_field"):
        Report.model_validate({**data, "extra_field": 1})
    broken = {**data, "decision": {k: v for k, v in data["decision"].items() if k != "kind"}}
    with pytest.raises(ValidationError, match=r"decision\.kind"):
        Report.model_validate(broken)


def test_what_a_job_row_holds_is_read_back_typed():
    data = json.loads(FIXTURE.read_text())
    assert stored_report(None) is None and stored_report({"scores": {}}) is None
    report = stored_report(
        {"report": data, "files": {"json": "/out/report.json", "html": "/out/report.html"}}
    )
    assert report is not None and report.verdict == data["verdict"]
    assert report_files({"files": {"html": "/out/report.html"}}) == {"html": "/out/report.html"}
    scores = soup_scores(report)
    assert scores["decision"] == data["decision"] and scores["test_average"] == data["soup"]["test_average"]
    assert set(scores["baselines"]) == set(data["baselines"])
