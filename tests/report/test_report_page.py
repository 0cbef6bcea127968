"""The HTML report: one self-contained page whose charts match the report's data, for any size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from markupsafe import escape

from soce.report import SECTIONS, render_report_html, render_report_sections
from soce.schemas.report import Report
from tests.report.report_pages import Page, make_report
from tests.report.report_pages import verdict_line as builders_verdict

SERIES = ("soup", "best_single", "uniform", "uniform_experts", "greedy")
FIXTURE = Path(__file__).parents[1] / "data" / "report-demo.json"  # report.json written by a real run


def render(report: Report | dict[str, Any]) -> tuple[str, Page]:
    text = render_report_html(report)
    page = Page(text)
    assert page.problems == []
    assert page.tags["script"] == 0 and page.tags["link"] == 0 and page.tags["img"] == 0
    external = [u for u in page.links if not u.startswith("#")]
    assert external == [], f"external references: {external}"
    assert "http://" not in text and "https://" not in text
    return text, page


@pytest.mark.parametrize(
    ("n_candidates", "n_categories", "n_trials", "layers"),
    [(2, 1, 1, False), (3, 2, 2, False), (4, 3, 36, False), (6, 5, 84, True), (20, 12, 500, True)],
)
def test_charts_match_the_data(n_candidates: int, n_categories: int, n_trials: int, layers: bool) -> None:
    report = make_report(n_candidates, n_categories, n_trials, seed=n_trials, layer_weights=layers)
    _, page = render(report)

    expected = ["scores-dev", "scores-test"]
    if n_categories >= 2:
        expected += ["correlation-pearson", "correlation-spearman"]
    expected += ["history", "weights", "baselines"]
    assert [c.name for c in page.charts] == expected

    cells = n_candidates * n_categories
    for split in ("dev", "test"):
        heatmap = page.chart(f"scores-{split}")
        assert heatmap.classes["cell"] == cells
        assert heatmap.classes["cell-extra"] == n_candidates  # the average column
        # the best single candidate (category None) and a fallback's choices outline no cell
        expert_cells = {(e["candidate"], e["category"]) for e in report["experts"] if e["category"]}
        assert heatmap.classes["expert-outline"] == len(expert_cells)
        assert expert_cells or report["experts_fallback"]
    if n_categories >= 2:
        for method in ("pearson", "spearman"):
            assert page.chart(f"correlation-{method}").classes["cell"] == n_categories**2
    history = page.chart("history")
    plotted = [t for t in report["search"]["history"] if t["objective"] is not None]
    assert history.classes["trial"] == len(plotted)
    assert history.classes["trial-pruned"] == sum(t["state"] == "PRUNED" for t in plotted)
    assert history.classes["best-so-far"] == 1 and history.classes["best-trial"] == 1
    # Pruned trials are hollow (a run records none with an objective); complete ones filled.
    for tag, attrs in history.elements:
        if "trial-pruned" in attrs.get("class", ""):
            assert tag == "circle" and attrs["fill"] == "none"
        if "trial-complete" in attrs.get("class", ""):
            assert attrs["fill"] != "none"
    assert page.chart("weights").classes["bar"] == len(report["weights"])
    bars = page.chart("baselines")
    assert bars.classes["bar"] == (n_categories + 1) * len(SERIES)
    for name in SERIES:
        assert bars.classes[f"series-{name}"] == n_categories + 1
    # Every chart draws something, and its shapes sit inside its own box.
    for chart in page.charts:
        assert sum(chart.tags[t] for t in ("rect", "circle", "path")) > 0
        for tag, a in chart.elements:
            if tag == "rect":
                x, y, w, h = (float(a[k]) for k in ("x", "y", "width", "height"))
                assert 0 <= x <= x + w <= chart.width and 0 <= y <= y + h <= chart.height, (chart.name, a)
            elif tag == "circle":
                assert 0 <= float(a["cx"]) <= chart.width and 0 <= float(a["cy"]) <= chart.height, a
    if layers:
        for group in report["layer_weights"]:
            assert group in page.text


def test_headline_and_tables_show_the_numbers() -> None:
    report = make_report(5, 4, 40, seed=3)
    text, page = render(report)
    soup, baselines = report["soup"], report["baselines"]
    headline = text.split('class="headline">')[1].split("</p>")[0]
    assert f"{soup['test_average']:.3f}" in headline
    assert f"{baselines['best_single']['test_average']:.3f}" in headline
    assert f"{baselines['uniform']['test_average']:.3f}" in headline
    for key in ("vs_best_single", "vs_uniform"):
        i = soup["intervals"][key]
        assert f"{i['diff']:+.3f}, 95% CI [{i['low']:+.3f}, {i['high']:+.3f}]" in headline
    assert "bfcl-v3" in page.text and "tpe" in page.text and soup["path"] in page.text
    # Score cells, weights, experts, per-category results and the correlation threshold.
    cand, cat = report["candidates"][2], report["categories"][1]
    assert f"{report['dev_scores'][cand][cat]:.3f}" in page.text
    assert f"{report['test_scores'][cand][cat]:.3f}" in page.text
    for weight in report["weights"].values():
        assert f"{weight:.3f}" in page.text
    for expert in report["experts"]:
        assert expert["reason"] in page.text
        assert expert["margin"] is None or f"{expert['margin']:+.3f}" in page.text
    for name in ("greedy", "uniform_experts"):
        for value in baselines[name]["test"].values():
            assert f"{value:.3f}" in page.text
    assert "0.30" in page.text and report["correlation"]["explanation"] in page.text
    assert "Warnings" in page.text and report["warnings"][0] in page.text


def test_correlations_mark_weak_categories_and_show_missing_values() -> None:
    report = make_report(4, 3, 5)
    _, page = render(report)
    pearson = page.chart("correlation-pearson")
    weak_labels = [a for t, a in pearson.elements if t == "text" and "weak" in a.get("class", "")]
    assert len(weak_labels) == 2 * len(report["correlation"]["weak_categories"])  # row and column
    missing = [
        a for t, a in pearson.elements if t == "rect" and a.get("class") == "cell" and a["fill"] == "#e0e0e0"
    ]
    # a category with one score for every candidate has no correlation: its row and column are None
    assert report["correlation"]["constant_categories"] == [report["categories"][1]]
    assert len(missing) == 2 * 3 - 1
    assert "n/a" in page.text


def test_untrusted_strings_are_escaped() -> None:
    names = ['<script>alert("x")</script>', "ft & merged", 'quote" onload="bad']
    report = make_report(3, 2, 10, candidate_names=names)
    assert report["best_single"] in names and report["best_single"] in report["verdict"]
    report["suite"] = "<b>suite</b>"
    report["warnings"] = ["<img src=x onerror=alert(1)>"]
    report["experts"][0]["reason"] = "</td></tr></table><script>"
    text, page = render(report)
    assert "<script" not in text and "<img" not in text and "<b>suite" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert '<script>alert("x")</script>' in page.text  # shown to the reader as text
    assert "ft & merged" in page.text and report["verdict"] in page.text
    assert not any("onload" in attrs or "onerror" in attrs for c in page.charts for _, attrs in c.elements)


def test_edge_cases_say_what_is_missing() -> None:
    _, page = render(make_report(2, 1, 1))
    assert "Correlations need two categories or more" in page.text

    # A job whose search has not started: the dashboard's report has no trials yet.
    report = make_report(3, 2, 4)
    report["search"]["history"] = []
    _, page = render(report)
    assert "No search trials were run." in page.text

    report = make_report(3, 2, 4)
    for trial in report["search"]["history"]:
        trial.update(state="FAIL", objective=None, best_so_far=None)
    _, page = render(report)
    assert "No trial produced an objective value" in page.text
    assert "history" not in [c.name for c in page.charts]


@pytest.mark.parametrize(
    "report",
    [
        {},
        {"suite": "x", "candidates": ["a", "b"], "categories": ["c"]},
        {
            "suite": None,
            "search": None,
            "soup": None,
            "baselines": None,
            "correlation": None,
            "weights": None,
        },
        {
            "dev_scores": {"a": {"c1": 0.5, "c2": None}, "b": {"c1": 0.7}},
            "search": {"history": [{"number": 0, "state": "COMPLETE", "objective": 0.4}]},
        },
    ],
    ids=["empty", "lists-only", "nones", "partial"],
)
def test_partial_reports_render(report: dict[str, Any]) -> None:
    _, page = render(report)
    assert "SoCE report" in page.text


def test_any_key_may_be_missing_or_none() -> None:
    """A report still being written (the dashboard's, while a job runs) lacks parts: the page says so."""

    def renders(report: dict[str, Any]) -> None:  # html.parser is slow: parse the last one only
        text = render_report_html(report)
        assert text.endswith("</html>\n") and "<script" not in text

    base = make_report(4, 3, 12, layer_weights=True)
    for key in list(base):
        report = make_report(4, 3, 12, layer_weights=True)
        report[key] = None
        renders(report)
        del report[key]
        renders(report)
    for section in ("search", "soup", "correlation"):
        for key in list(base[section]):
            report = make_report(4, 3, 12)
            report[section][key] = None
            renders(report)
    report = make_report(4, 3, 12)
    report["experts"] = [{"category": None}]
    report["search"]["history"] = [{"number": 0, "state": None, "objective": None}]
    report["baselines"]["greedy"] = None
    render(report)


def test_missing_optional_values_render_as_not_available() -> None:
    report = make_report(4, 3, 20)
    report.pop("layer_weights", None)
    report["soup"]["intervals"] = {}
    report["baselines"].pop("greedy")
    report["baselines"]["uniform"]["test"].pop(report["categories"][0])
    report["soup"]["dev_average"] = None
    report["experts"][0].update(runner_up=None, runner_up_score=None, margin=None)
    _, page = render(report)
    bars = page.chart("baselines")
    assert bars.classes["bar"] == 4 * 4 - 1
    assert bars.classes["series-greedy"] == 0
    assert page.chart("history").classes["best-so-far"] == 1
    assert "n/a" in page.text


def test_large_reports_stay_readable() -> None:
    """Long names are shortened on charts (the full name stays in a tooltip); charts keep sane sizes."""
    long_names = [f"org/very-long-model-name-fine-tuned-on-task-{i}-with-lora-rank-64" for i in range(20)]
    _, page = render(make_report(20, 12, 500, candidate_names=long_names))
    for chart in page.charts:
        assert 300 <= chart.width <= 1800 and 100 <= chart.height <= 1200, (
            chart.name,
            chart.width,
            chart.height,
        )
    heatmap = page.chart("scores-dev")
    assert long_names[0] in page.text  # in the tooltip
    shown = [t for t in heatmap.texts if t.startswith("org/")]
    assert len(shown) == 20 and all(len(t) <= 32 and "…" in t for t in shown)
    assert len(set(shown)) == 20  # shortened in the middle, so names sharing a prefix stay distinct


def test_the_verdict_opens_the_page_and_the_final_choice_lists_every_contender() -> None:
    report = make_report(4, 3, 6, kind="single")
    best = report["best_single"]
    html = render_report_html(report)
    body = html[html.index("<body>") :]
    assert body.index('id="verdict"') < body.index('class="meta"') < body.index('id="scores"')
    assert report["verdict"] == f"keep {best}: no soup beat it on the selection split"
    assert escape(report["verdict"]) in html and escape(report["candidate_paths"][best]) in html
    assert 'class="verdict verdict-single"' in html
    section = html[html.index('<section id="selection">') : html.index('<section id="baselines">')]
    selection = report["selection"]
    assert escape(f"best single ({best}) (chosen)") in section and escape(selection["reason"]) in section
    assert len(selection["contenders"]) >= 4
    for contender in selection["contenders"]:
        assert escape(contender["label"]) in section and f"{contender['diff']:+.3f}" in section
    assert "50% of each task" in section

    soup = render_report_html(make_report(4, 3, 6))
    assert 'class="verdict verdict-soup"' in soup and "use the soup: " in soup
    # A job still running has no verdict and no final choice yet.
    running = {k: v for k, v in report.items() if k not in ("verdict", "decision", "selection")}
    html = render_report_html(running)
    assert 'id="verdict"' not in html and 'id="selection"' not in html


def test_the_sections_are_the_pages_own() -> None:
    """The dashboard lays out the same sections as report.html, with the same charts and tables."""
    report = make_report(4, 3, 6)
    page = render_report_html(report)
    sections = render_report_sections(report)
    assert list(sections) == list(SECTIONS)
    for name, html in sections.items():
        assert html.strip().startswith("<section id=") and html.strip() in page, name
        Page(html)  # every element closed in order
    assert 'data-chart="history"' in sections["search"] and 'data-chart="weights"' in sections["weights"]
    assert "(chosen)" in sections["selection"]


@pytest.mark.parametrize("kind", ["soup", "single"])
def test_a_typed_report_renders_like_its_json(kind: str) -> None:
    """The page reads the report's parts as attributes, so a `Report` renders like report.json's dict."""
    report = make_report(5, 4, 20, layer_weights=True, kind=kind)
    typed = Report.model_validate(report)
    assert render_report_html(typed) == render_report_html(report)
    assert render_report_sections(typed) == render_report_sections(report)


def test_a_real_runs_report_renders_the_same_as_json_and_as_a_report() -> None:
    data = json.loads(FIXTURE.read_text())
    typed = Report.model_validate(data)
    text, page = render(data)
    assert render_report_html(typed) == text
    assert render_report_sections(typed) == render_report_sections(data)
    assert [c.name for c in page.charts] == [
        "scores-dev",
        "scores-test",
        "correlation-pearson",
        "correlation-spearman",
        "history",
        "weights",
        "baselines",
    ]
    assert 'class="verdict verdict-soup"' in text and escape(data["verdict"]) in text
    history = data["search"]["history"]
    assert page.chart("history").classes["trial"] == sum(t["objective"] is not None for t in history)
    assert page.chart("weights").classes["bar"] == len(data["weights"])
    assert "(chosen)" in text and data["soup"]["path"] in page.text


SIZES = [(2, 1, 1), (3, 2, 2), (4, 3, 36), (6, 5, 84), (20, 12, 500)]


@pytest.mark.parametrize(("n_candidates", "n_categories", "n_trials"), SIZES)
@pytest.mark.parametrize("layers", [False, True], ids=["simplex", "layerwise"])
@pytest.mark.parametrize("kind", ["soup", "single"])
def test_make_report_is_a_report_whose_parts_agree(
    n_candidates: int, n_categories: int, n_trials: int, layers: bool, kind: str
) -> None:
    """The builder's data is report.json as a run writes it: a valid `Report`, its parts consistent."""
    report = make_report(n_candidates, n_categories, n_trials, seed=n_trials, layer_weights=layers, kind=kind)
    r = Report.model_validate(report)
    assert r.as_json() == report
    assert len(r.candidates) == n_candidates and len(r.categories) == n_categories
    # scores and the best single candidate (by its average on all of dev)
    for c in r.candidates:
        assert r.dev_average[c] == pytest.approx(sum(r.dev_scores[c].values()) / n_categories)
    assert r.best_single == max(r.candidates, key=lambda c: r.dev_average[c])
    assert r.best_single in r.expert_candidates and r.expert_candidates == list(
        dict.fromkeys(r.expert_candidates)
    )
    assert set(r.expert_candidates) <= {e.candidate for e in r.experts}
    assert r.experts[-1].category is None and r.experts[-1].candidate == r.best_single
    # the recipe that ran
    assert r.recipe.name == r.name and r.recipe.candidates == [r.candidate_paths[c] for c in r.candidates]
    assert r.recipe.space == r.search.space == ("layerwise" if layers else "simplex")
    assert r.recipe.tau == r.correlation.tau and r.recipe.correlation == r.correlation.method
    # the search
    history = r.search.history
    assert len(history) == n_trials and r.recipe.n_trials == r.search.n_trials
    assert r.search.n_trials == sum(t.state in ("COMPLETE", "PRUNED") for t in history)
    assert r.search.evaluations == sum(t.evaluated and bool(t.category_scores) for t in history)
    best_trial = history[r.search.best_trial]
    assert best_trial.state == "COMPLETE" and best_trial.objective == r.search.best_dev_objective
    assert r.search.best_dev_objective == max(t.objective for t in history if t.state == "COMPLETE")
    assert all((t.objective is None) == (t.state != "COMPLETE") for t in history)
    assert all((t.layer_weights is not None) == layers for t in history)
    # the final choice, the soup written and the decision
    sel, decision, soup = r.selection, r.decision, r.soup
    contenders = {c.name: c for c in sel.contenders}
    assert sel.kind == decision.kind == kind and sel.chosen in contenders and sel.best_soup in contenders
    passed = [c.name for c in sel.contenders if c.passed]
    assert (sel.chosen in passed) if kind == "soup" else passed == []
    assert decision.best_single == r.best_single and decision.reason == sel.reason
    assert decision.source == contenders[sel.chosen].label and decision.selection_fraction == sel.fraction
    written = contenders[soup.source]
    assert soup.source == sel.best_soup and soup.recommended == (kind == "soup")
    assert r.weights == written.weights and r.layer_weights == written.layer_weights
    assert (r.layer_weights is not None) == layers and soup.method == ("layerwise" if layers else "linear")
    assert soup.test_average == written.test_average
    assert set(soup.intervals) == {f"vs_{name}" for name in r.baselines}
    if kind == "soup":
        assert sel.chosen == sel.best_soup and decision.model == soup.path and decision.name == r.name
        assert decision.vs_best_single == soup.intervals["vs_best_single"]
    else:
        assert sel.chosen == "best_single" and decision.name == r.best_single
        assert decision.model == r.candidate_paths[r.best_single]
    assert r.baselines["best_single"].test == r.test_scores[r.best_single]


@pytest.mark.parametrize("kind", ["soup", "single"])
@pytest.mark.parametrize("fraction", [0.5, 0.0])
def test_the_builders_verdict_is_the_runs(kind: str, fraction: float) -> None:
    from workers.finalize import verdict_line

    report = Report.model_validate(make_report(4, 3, 12, kind=kind))
    assert report.verdict == verdict_line(report.decision)
    decision = report.decision.model_copy(update={"selection_fraction": fraction})
    assert builders_verdict(decision.model_dump(mode="json")) == verdict_line(decision)


def test_the_builders_analysis_is_the_analyse_steps() -> None:
    """Correlations, experts and ingredients as optimizer's analysis makes them from the same scores."""
    from optimizer.correlation import analyse_correlation
    from optimizer.experts import best_single, choose_experts, ingredient_pool

    seen = set()
    for n_candidates, n_categories, _ in SIZES:
        for seed in range(6):
            report = make_report(n_candidates, n_categories, 3, seed=seed)
            recipe, parts = report["recipe"], report["dev_parts"]
            cands, cats = report["candidates"], report["categories"]
            values = [[parts["search_scores"][c][k] for k in cats] for c in cands]
            corr = analyse_correlation(
                cands,
                cats,
                values,
                tau=recipe["tau"],
                method=recipe["correlation"],
                absolute=recipe["absolute"],
            ).as_dict()
            for method in ("pearson", "spearman"):
                for a in cats:
                    for b in cats:
                        want, got = corr[method][a][b], report["correlation"][method][a][b]
                        assert (want is None and got is None) or got == pytest.approx(want), (method, a, b)
            for key in ("method", "tau", "absolute", "weak_categories", "constant_categories", "warnings"):
                assert report["correlation"][key] == corr[key], key
            assert report["correlation"]["explanation"] == corr["explanation"]
            experts = choose_experts(
                cands,
                cats,
                values,
                [parts["search_average"][c] for c in cands],
                corr["weak_categories"],
                max_experts=recipe["max_experts"],
            )
            dev_average = [report["dev_average"][c] for c in cands]
            pool = ingredient_pool(
                experts, cands, dev_average, include_best_single=recipe["include_best_single"]
            )
            assert report["experts"] == [c.as_dict() for c in pool.choices]
            assert report["expert_candidates"] == pool.candidates
            assert report["experts_fallback"] == pool.fallback
            assert report["best_single"] == best_single(cands, dev_average)
            assert report["warnings"] == [*corr["warnings"], *experts.warnings]
            seen |= {
                ("fallback", pool.fallback),
                ("trimmed", any("max_experts" in w for w in experts.warnings)),
            }
    assert seen == {("fallback", True), ("fallback", False), ("trimmed", True), ("trimmed", False)}
