"""The output-ensemble baseline's pieces: which experts are the soup's ingredients, the share of the
ensemble's gain the soup keeps, why an ensemble is not scored, and how report.html shows each case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optimizer.space import SoupWeights
from soce.errors import EvaluationError
from soce.report import render_report_html, render_report_sections
from soce.schemas.report import BaselineResult, Report
from workers.held_out import ENSEMBLE_LABEL, ensemble_gain_kept, ensemble_test_scores, soup_ingredients

DEMO = Path(__file__).parents[1] / "data" / "report-demo.json"


def test_the_ingredients_are_the_experts_with_a_weight():
    assert soup_ingredients(SoupWeights(("a", "b", "c"), (0.5, 0.0, 0.5))) == ["a", "c"]
    # layer-wise: an expert weighted in any group is an ingredient
    groups = {"embed": (1.0, 0.0, 0.0), "head": (0.0, 1.0, 0.0)}
    assert soup_ingredients(SoupWeights(("a", "b", "c"), (0.5, 0.5, 0.0), groups)) == ["a", "b"]


def test_the_share_of_the_ensembles_gain_the_soup_keeps():
    assert ensemble_gain_kept(0.55, 0.50, 0.60) == (pytest.approx(0.5), None)
    assert ensemble_gain_kept(0.45, 0.50, 0.60)[0] == pytest.approx(-0.5)  # the soup is below the single
    assert ensemble_gain_kept(0.70, 0.50, 0.60)[0] == pytest.approx(2.0)  # the soup beats the ensemble
    kept, note = ensemble_gain_kept(0.55, 0.50, 0.50)
    assert kept is None and "does not beat the best single candidate" in note


class FailingResident:
    def cached_ensemble_scores(self, labels, split, *, samples=False, engine=None):
        raise EvaluationError("the output ensemble decodes greedily only: generation kwargs {'num_beams': 2}")


def test_an_ensemble_not_scored_says_why():
    off = ensemble_test_scores(FailingResident(), ["a", "b"], None, enabled=False)  # type: ignore[arg-type]
    assert off.scored is None and "ensemble: false" in off.note
    one = ensemble_test_scores(FailingResident(), ["a"], None, enabled=True)  # type: ignore[arg-type]
    assert one.scored is None and "one ingredient (a)" in one.note
    failed = ensemble_test_scores(FailingResident(), ["a", "b"], None, enabled=True)  # type: ignore[arg-type]
    assert failed.scored is None and "num_beams" in failed.note


def test_the_report_page_shows_the_ensemble_and_the_share_of_its_gain():
    report = Report.model_validate(json.loads(DEMO.read_text()))
    best = report.baselines["best_single"]
    members = list(report.weights)
    ensemble = BaselineResult(
        label=ENSEMBLE_LABEL,
        kind="ensemble",
        members=members,
        weights={m: 1 / len(members) for m in members},
        dev_average=None,
        test={c: v + 0.05 for c, v in best.test.items()},
        test_average=best.test_average + 0.05,
    )
    kept, note = ensemble_gain_kept(report.soup.test_average, best.test_average, ensemble.test_average)
    soup = report.soup.model_copy(update={"ensemble_gain_kept": kept, "ensemble_note": note})
    shown = report.model_copy(update={"baselines": {**report.baselines, "ensemble": ensemble}, "soup": soup})
    html = render_report_html(shown)
    assert "series-ensemble" in html and "output ensemble of the soup&#39;s ingredients" in html
    assert f"The soup keeps <strong>{100 * kept:.0f}%</strong> of the ensemble's gain" in html
    dashboard = render_report_sections(shown)["baselines"]  # the job page's section
    assert 'id="ensemble-gain"' in dashboard and "soup vs ensemble" not in dashboard  # no interval given

    soup = report.soup.model_copy(update={"ensemble_note": "the recipe turns the output ensemble off"})
    html = render_report_html(report.model_copy(update={"soup": soup}))
    assert "series-ensemble" not in html and "the recipe turns the output ensemble off." in html
    assert 'id="ensemble-gain"' not in render_report_html(report)  # an older report: nothing said
