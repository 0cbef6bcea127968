"""The HTML report: one self-contained page whose charts match the report's data, for any size."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import pytest

from optimizer.report_html import render_report_html

VOID_TAGS = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "source", "wbr"}
SERIES = ("soup", "best_single", "uniform", "uniform_experts", "greedy")


def make_report(
    n_candidates: int,
    n_categories: int,
    n_trials: int,
    *,
    seed: int = 0,
    candidate_names: list[str] | None = None,
    layer_weights: bool = False,
) -> dict[str, Any]:
    """A realistic report.json: scores near 0.6, three experts at most, a search history with pruning."""
    rng = random.Random(seed)
    candidates = candidate_names or [f"llama-3.1-8b-ft-{i:02d}" for i in range(n_candidates)]
    categories = [f"category_{k}_{'multi_turn' if k % 3 == 0 else 'live'}" for k in range(n_categories)]

    def matrix(shift: float) -> dict[str, dict[str, float]]:
        return {c: {k: round(rng.uniform(0.45, 0.8) + shift, 4) for k in categories} for c in candidates}

    dev, test = matrix(0.0), matrix(-0.02)
    dev_avg = {c: sum(dev[c].values()) / n_categories for c in candidates}
    test_avg = {c: sum(test[c].values()) / n_categories for c in candidates}
    pearson = {
        a: {b: 1.0 if a == b else round(rng.uniform(-0.6, 0.95), 3) for b in categories} for a in categories
    }
    spearman = {
        a: {b: 1.0 if a == b else round(rng.uniform(-0.6, 0.95), 3) for b in categories} for a in categories
    }
    if n_categories >= 3:  # a constant column gives no correlation
        pearson[categories[1]][categories[2]] = pearson[categories[2]][categories[1]] = None
    weak = categories[: min(3, n_categories)] if n_categories > 1 else []
    experts, expert_names = [], []
    for cat in weak or categories[:1]:
        ranked = sorted(candidates, key=lambda c: -dev[c][cat])
        runner = ranked[1] if len(ranked) > 1 else None
        experts.append(
            {
                "category": cat,
                "candidate": ranked[0],
                "score": dev[ranked[0]][cat],
                "runner_up": runner,
                "runner_up_score": dev[runner][cat] if runner else None,
                "margin": dev[ranked[0]][cat] - dev[runner][cat] if runner else None,
                "reason": "best dev score in a weakly correlated category",
            }
        )
        if ranked[0] not in expert_names:
            expert_names.append(ranked[0])
    raw = [rng.uniform(0.1, 1.0) for _ in expert_names]
    weights = {name: w / sum(raw) for name, w in zip(expert_names, raw, strict=True)}
    history, best = [], None
    for number in range(n_trials):
        state = rng.choice(["COMPLETE"] * 6 + ["PRUNED"] * 2 + ["FAIL"])
        objective = None if state == "FAIL" else round(rng.uniform(0.55, 0.72), 4)
        if state == "COMPLETE":
            best = objective if best is None else max(best, objective)
        history.append(
            {
                "number": number,
                "state": state,
                "objective": objective,
                "best_so_far": best,
                "weights": dict(weights),
                "category_scores": {k: rng.uniform(0.5, 0.8) for k in categories},
            }
        )
    best_trial = next(
        (t["number"] for t in history if t["state"] == "COMPLETE" and t["objective"] == best), None
    )

    def result(label: str, members: list[str], shift: float) -> dict[str, Any]:
        scores = {k: round(rng.uniform(0.5, 0.75) + shift, 4) for k in categories}
        return {
            "label": label,
            "members": members,
            "dev_average": round(rng.uniform(0.55, 0.75), 4),
            "test": scores,
            "test_average": sum(scores.values()) / n_categories,
        }

    soup = result("soup", expert_names, 0.03)
    soup_test = soup.pop("test_average")
    baselines = {
        "best_single": result("best single (dev)", [max(candidates, key=dev_avg.get)], 0.0),
        "uniform": result("uniform soup", candidates, -0.01),
        "uniform_experts": result("uniform soup of experts", expert_names, 0.0),
        "greedy": result("greedy soup", candidates[:2], 0.01),
    }

    def interval(baseline: float) -> dict[str, float]:
        diff = soup_test - baseline
        return {"diff": diff, "low": diff - 0.025, "high": diff + 0.025, "level": 0.95}

    report: dict[str, Any] = {
        "suite": "bfcl-v3",
        "created": "2025-11-22T11:00:00+00:00",
        "soce_version": "0.1.0",
        "candidates": candidates,
        "categories": categories,
        "dev_scores": dev,
        "dev_average": dev_avg,
        "test_scores": test,
        "test_average": test_avg,
        "correlation": {
            "pearson": pearson,
            "spearman": spearman,
            "tau": 0.3,
            "absolute": False,
            "weak_categories": weak,
            "explanation": "tau = 0.3: categories whose scores move apart across candidates get an expert.",
            "warnings": ["only 3 candidates: correlations are noisy"] if n_candidates <= 3 else [],
        },
        "experts": experts,
        "weights": weights,
        "search": {
            "sampler": "tpe",
            "space": "simplex",
            "n_trials": n_trials,
            "evaluations": n_trials + n_candidates * n_categories,
            "best_dev_objective": best,
            "best_trial": best_trial,
            "history": history,
        },
        "baselines": baselines,
        "soup": {
            "path": "/data/soups/bfcl-v3/job-17/soup",
            "dev_average": soup["dev_average"],
            "test": soup["test"],
            "test_average": soup_test,
            "intervals": {
                "vs_best_single": interval(baselines["best_single"]["test_average"]),
                "vs_uniform": interval(baselines["uniform"]["test_average"]),
            },
        },
        "warnings": ["the soup's test average is within the interval of the best single candidate"],
    }
    if layer_weights:
        report["layer_weights"] = {
            group: {name: 1 / len(expert_names) for name in expert_names}
            for group in ("embeddings", "blocks_0_7", "blocks_8_15", "head")
        }
    return report


@dataclass
class Chart:
    name: str
    width: int
    height: int
    tags: Counter = field(default_factory=Counter)
    classes: Counter = field(default_factory=Counter)
    elements: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)


class Page(HTMLParser):
    """Parses the page, checks that every element is closed in order, and collects the charts."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.charts: list[Chart] = []
        self.in_svg = False
        self.links: list[str] = []
        self.text_parts: list[str] = []
        self.tags: Counter = Counter()
        self.feed(text)
        self.close()
        if self.stack:
            self.problems.append(f"unclosed: {self.stack}")

    @property
    def text(self) -> str:
        return " ".join(self.text_parts)

    def chart(self, name: str) -> Chart:
        found = [c for c in self.charts if c.name == name]
        assert len(found) == 1, f"{len(found)} charts named {name!r}"
        return found[0]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._element(tag, attrs)
        if tag not in VOID_TAGS:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._element(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:]} at {self.getpos()}")
            return
        self.stack.pop()
        if tag == "svg":
            self.in_svg = False

    def handle_data(self, data: str) -> None:
        self.text_parts.append(data)
        if self.in_svg and self.stack[-1] == "text":
            self.charts[-1].texts.append(data)

    def _element(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags[tag] += 1
        self.links += [values[k] for k in ("src", "href", "xlink:href", "action") if k in values]
        if tag == "svg":
            assert not self.in_svg, "nested svg"
            self.in_svg = True
            size = (int(values["width"]), int(values["height"]))
            self.charts.append(Chart(values.get("data-chart", ""), *size))
        elif self.in_svg:
            chart = self.charts[-1]
            chart.tags[tag] += 1
            chart.elements.append((tag, values))
            for cls in values.get("class", "").split():
                chart.classes[cls] += 1


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
            "search": {"history": [{"objective": 0.4}]},
        },
    ],
    ids=["empty", "lists-only", "nones", "partial"],
)
def test_partial_reports_render(report: dict[str, Any]) -> None:
    _, page = render(report)
    assert "SoCE report" in page.text


@pytest.mark.parametrize("junk", [None, "junk", 3, [], {}])
def test_any_key_may_be_missing_or_malformed(junk: Any) -> None:
    def renders(report: dict[str, Any]) -> None:  # html.parser is slow: parse the last one only
        text = render_report_html(report)
        assert text.endswith("</html>\n") and "<script" not in text

    base = make_report(4, 3, 12, layer_weights=True)
    for key in list(base):
        report = make_report(4, 3, 12, layer_weights=True)
        report[key] = junk
        renders(report)
        del report[key]
        renders(report)
    for section in ("search", "soup", "correlation"):
        for key in list(base[section]):
            report = make_report(4, 3, 12)
            report[section][key] = junk
            renders(report)
    report = make_report(4, 3, 12)
    report["experts"] = [junk, {"category": None}]
    report["search"]["history"] = [junk, {"number": "x", "state": None, "objective": "0.5"}]
    report["baselines"]["greedy"] = junk
    render(report)


def test_missing_optional_values_render_as_not_available() -> None:
    report = make_report(4, 3, 20)
    report.pop("layer_weights", None)
    report["soup"]["intervals"] = {}
    report["baselines"].pop("greedy")
    report["baselines"]["uniform"]["test"].pop(report["categories"][0])
    report["soup"]["dev_average"] = None
    for trial in report["search"]["history"]:
        trial.pop("best_so_far")  # the best-so-far line is recomputed from complete trials
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
