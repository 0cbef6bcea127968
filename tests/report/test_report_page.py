"""The HTML report: one self-contained page whose charts match the report's data, for any size."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from soce.report import SECTIONS, render_report_html, render_report_sections
from tests.report.report_pages import Page, make_report

SERIES = ("soup", "best_single", "uniform", "uniform_experts", "greedy")


def render(report: dict[str, Any]) -> tuple[str, Page]:
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
    [(2, 1, 0, False), (3, 2, 1, False), (4, 3, 36, False), (6, 5, 84, True), (20, 12, 500, True)],
)
def test_charts_match_the_data(n_candidates: int, n_categories: int, n_trials: int, layers: bool) -> None:
    report = make_report(n_candidates, n_categories, n_trials, seed=n_trials, layer_weights=layers)
    _, page = render(report)

    expected = ["scores-dev", "scores-test"]
    if n_categories >= 2:
        expected += ["correlation-pearson", "correlation-spearman"]
    if n_trials:
        expected.append("history")
    expected += ["weights", "baselines"]
    assert [c.name for c in page.charts] == expected

    cells = n_candidates * n_categories
    for split in ("dev", "test"):
        heatmap = page.chart(f"scores-{split}")
        assert heatmap.classes["cell"] == cells
        assert heatmap.classes["cell-extra"] == n_candidates  # the average column
        expert_cells = {(e["candidate"], e["category"]) for e in report["experts"]}
        assert heatmap.classes["expert-outline"] == len(expert_cells) >= 1
    if n_categories >= 2:
        for method in ("pearson", "spearman"):
            assert page.chart(f"correlation-{method}").classes["cell"] == n_categories**2
    if n_trials:
        history = page.chart("history")
        plotted = [t for t in report["search"]["history"] if t["objective"] is not None]
        assert history.classes["trial"] == len(plotted)
        assert history.classes["trial-pruned"] == sum(t["state"] == "PRUNED" for t in plotted)
        assert history.classes["best-so-far"] == 1
        assert history.classes["best-trial"] == (1 if report["search"]["best_trial"] is not None else 0)
        # Pruned trials are hollow; complete ones filled.
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
        assert expert["reason"] in page.text and f"{expert['margin']:+.3f}" in page.text
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
    assert len(missing) == 2  # the two symmetric None entries
    assert "n/a" in page.text


def test_untrusted_strings_are_escaped() -> None:
    names = ['<script>alert("x")</script>', "ft & merged", 'quote" onload="bad']
    report = make_report(3, 2, 10, candidate_names=names)
    report["suite"] = "<b>suite</b>"
    report["warnings"] = ["<img src=x onerror=alert(1)>"]
    report["experts"][0]["reason"] = "</td></tr></table><script>"
    text, page = render(report)
    assert "<script" not in text and "<img" not in text and "<b>suite" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in text
    assert '<script>alert("x")</script>' in page.text  # shown to the reader as text
    assert "ft & merged" in page.text
    assert not any("onload" in attrs or "onerror" in attrs for c in page.charts for _, attrs in c.elements)


def test_edge_cases_say_what_is_missing() -> None:
    _, page = render(make_report(2, 1, 0))
    assert "No search trials were run." in page.text
    assert "Correlations need two categories or more" in page.text

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
    report = make_report(4, 3, 6)
    report["verdict"] = "keep <llama-3.1-8b-ft-02>: no soup beat it on the selection split"
    report["decision"] = {"kind": "single", "name": "llama-3.1-8b-ft-02", "model": "/ckpt/ft-02"}
    report["selection"] = {
        "chosen": "best_single",
        "fraction": 0.5,
        "level": 0.95,
        "reason": "no soup beat best single (ft-02) on the selection part",
        "contenders": [
            {
                "name": "best_single",
                "label": "best single (ft-02)",
                "kind": "single",
                "average": 0.61,
                "diff": 0.0,
                "low": 0.0,
                "passed": False,
                "search_average": 0.63,
                "test_average": 0.6,
            },
            {
                "name": "trial_4",
                "label": "trial 4",
                "kind": "soup",
                "average": 0.62,
                "diff": 0.01,
                "low": -0.02,
                "passed": False,
                "search_average": 0.66,
                "test_average": 0.59,
            },
        ],
    }
    html = render_report_html(report)
    body = html[html.index("<body>") :]
    assert body.index('id="verdict"') < body.index('class="meta"') < body.index('id="scores"')
    assert "keep &lt;llama-3.1-8b-ft-02&gt;: no soup beat it" in html and "/ckpt/ft-02" in html
    assert 'class="verdict verdict-single"' in html
    section = html[html.index('<section id="selection">') : html.index('<section id="baselines">')]
    assert "best single (ft-02) (chosen)" in section and "trial 4" in section and "+0.010" in section
    assert "50% of each task" in section
    assert 'id="verdict"' not in render_report_html(make_report(4, 3, 6))  # none without a decision


def test_the_sections_are_the_pages_own() -> None:
    """The dashboard lays out the same sections as report.html, with the same charts and tables."""
    report = make_report(4, 3, 6)
    report["selection"] = {"chosen": "best_single", "fraction": 0.5, "contenders": [{"name": "best_single"}]}
    page = render_report_html(report)
    sections = render_report_sections(report)
    assert list(sections) == list(SECTIONS)
    for name, html in sections.items():
        assert html.strip().startswith("<section id=") and html.strip() in page, name
        Page(html)  # every element closed in order
    assert 'data-chart="history"' in sections["search"] and 'data-chart="weights"' in sections["weights"]


def _typed(report: dict[str, Any]) -> SimpleNamespace:
    """report.json's dict with its records as objects, as a typed report holds them (maps stay dicts)."""
    ns, r = SimpleNamespace, dict(report)
    r["decision"] = ns(**r["decision"])
    r["search"] = ns(**{**r["search"], "history": [ns(**t) for t in r["search"]["history"]]})
    r["correlation"] = ns(**r["correlation"])
    r["experts"] = [ns(**e) for e in r["experts"]]
    r["selection"] = ns(**{**r["selection"], "contenders": [ns(**c) for c in r["selection"]["contenders"]]})
    r["baselines"] = {name: ns(**b) for name, b in r["baselines"].items()}
    r["soup"] = ns(**{**r["soup"], "intervals": {k: ns(**i) for k, i in r["soup"]["intervals"].items()}})
    r["dev_parts"] = ns(**r["dev_parts"])
    return ns(**r)


def test_a_typed_report_renders_like_its_json() -> None:
    """The page reads the report's parts as attributes, so a typed report renders like report.json's dict."""
    report = make_report(5, 4, 20, layer_weights=True)
    report["verdict"] = "keep llama-3.1-8b-ft-02"
    report["decision"] = {"kind": "single", "name": "llama-3.1-8b-ft-02", "model": "/ckpt/ft-02"}
    report["dev_parts"] = {"select_scores": report["dev_scores"], "select_average": report["dev_average"]}
    report["selection"] = {
        "chosen": "best_single",
        "fraction": 0.5,
        "level": 0.95,
        "reason": "no soup beat best single",
        "contenders": [{"name": "best_single", "label": "best single", "kind": "single", "average": 0.6}],
    }
    typed = _typed(report)
    assert isinstance(typed.search.history[0], SimpleNamespace) and isinstance(typed.dev_scores, dict)
    assert render_report_html(typed) == render_report_html(report)
