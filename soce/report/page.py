"""Render a SoCE report (report.json's content) as one self-contained HTML page.

The page has no external resources and no JavaScript: inline CSS and the inline SVG charts of
`soce.report.charts`, so it can be mailed, archived or opened offline. The text lives in Jinja
templates (autoescaped); this module only prepares the charts and the few values the templates cannot
read straight from the report. The report may be a mapping or an object with the same attributes, and
may be partial (a job still running): a missing part is said to be missing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from functools import cache
from typing import Any

import jinja2
from markupsafe import Markup

from soce.report import charts
from soce.report.charts import BarSeries, TrialPoint, as_number, format_number
from soce.report.interpolation_chart import interpolation_svg

__all__ = ["SECTIONS", "get", "render_report_html", "render_report_sections"]

# The parts of the page that the dashboard shows on a job's page, in the page's order.
SECTIONS = (
    "scores", "correlation", "experts", "basins", "search", "weights", "selection", "baselines",
    "interpolation",
)  # fmt: skip

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
_SERIES: tuple[tuple[str, str, str], ...] = (
    ("soup", "Soup", "#D55E00"),
    ("best_single", "Best single", "#0072B2"),
    ("uniform", "Uniform (all)", "#999999"),
    ("uniform_experts", "Uniform (experts)", "#CC79A7"),
    ("greedy", "Greedy", "#009E73"),
    ("ensemble", "Output ensemble", "#56B4E9"),
)


def render_report_html(report: Any) -> str:
    """The report as a single HTML page (inline CSS and SVG, no scripts, no external resources)."""
    return _environment().get_template("report.html").render(report=report, view=_view(report))


def render_report_sections(report: Any) -> dict[str, Markup]:
    """The page's sections named in SECTIONS, each as escaped HTML, for pages that lay them out."""
    sections = _environment().get_template("_sections.html").module
    view = _view(report)
    return {name: getattr(sections, name)(report, view) for name in SECTIONS}


def get(obj: Any, name: str, default: Any = None) -> Any:
    """`obj[name]` for a mapping, `obj.name` for any other object; `default` if missing or None."""
    value = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
    return default if value is None else value


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("soce.report", "templates"),
        autoescape=True,
        undefined=jinja2.ChainableUndefined,  # report.soup.intervals reads as empty when soup is missing
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = format_number
    env.filters["na"] = _text_or_na
    env.filters["percent"] = _percent
    return env


def _text_or_na(value: Any) -> str:
    """The value as text, or "n/a" for None, an empty string or an undefined attribute."""
    if value is None or isinstance(value, jinja2.Undefined):
        return "n/a"
    return str(value) or "n/a"


def _percent(value: Any) -> str:
    """A fraction as a percentage ("95%"), or "" if it is not a number."""
    number = as_number(value)
    return "" if number is None else f"{number * 100:g}%"


def _items(obj: Any) -> list[tuple[str, Any]]:
    """The (key, value) pairs of a mapping, or the attributes of an object; none for None."""
    pairs = obj.items() if isinstance(obj, Mapping) else vars(obj).items() if hasattr(obj, "__dict__") else ()
    return [(str(k), v) for k, v in pairs]


def _view(report: Any) -> dict[str, Any]:
    """What the templates show that is not a value of the report itself: charts and derived tables."""
    candidates = [str(c) for c in get(report, "candidates", [])]
    categories = [str(c) for c in get(report, "categories", [])]
    return {
        "candidates": candidates,
        "categories": categories,
        "score_charts": _score_charts(report, candidates, categories),
        "correlation": _correlation(report, categories),
        "search": _search(report),
        "weights": _weights(report),
        "baselines": _baselines(report, categories),
        "interpolation": _interpolation(report),
    }


def _score_charts(report: Any, candidates: list[str], categories: list[str]) -> dict[str, Markup | None]:
    """A heatmap per split ("dev", "test"), None for a split without scores; the experts outlined."""
    if not candidates or not categories:
        return {}
    outlined = set()
    for expert in get(report, "experts", []):
        cand, cat = get(expert, "candidate"), get(expert, "category")
        if cand in candidates and cat in categories:
            outlined.add((candidates.index(cand), categories.index(cat)))
    out: dict[str, Markup | None] = {}
    for split in ("dev", "test"):
        scores = get(report, f"{split}_scores")
        if not scores:
            out[split] = None
            continue
        averages = get(report, f"{split}_average", {})
        svg = charts.heatmap_svg(
            chart=f"scores-{split}",
            title=f"{split} scores",
            rows=candidates,
            cols=categories,
            matrix=[[as_number(get(get(scores, c), k)) for k in categories] for c in candidates],
            diverging=False,
            digits=3,
            outlined=outlined,
            extra_column=("average", [as_number(get(averages, c)) for c in candidates]),
        )
        out[split] = Markup(svg)
    return out


def _correlation(report: Any, categories: list[str]) -> dict[str, Any]:
    """The weakly correlated categories and a heatmap per method (None for a method not reported)."""
    corr = get(report, "correlation")
    weak = [str(w) for w in get(corr, "weak_categories", [])]
    out: dict[str, Any] = {"weak": weak, "charts": {}}
    if len(categories) < 2:
        return out
    marked = {categories.index(c) for c in weak if c in categories}
    for method in ("pearson", "spearman"):
        table = get(corr, method)
        if not table:
            out["charts"][method] = None
            continue
        svg = charts.heatmap_svg(
            chart=f"correlation-{method}",
            title=f"{method.capitalize()} correlation across candidates",
            rows=categories,
            cols=categories,
            matrix=[[as_number(get(get(table, a), b)) for b in categories] for a in categories],
            diverging=True,
            digits=2,
            marked=marked,
        )
        out["charts"][method] = Markup(svg)
    return out


def _search(report: Any) -> dict[str, Any]:
    """Trial counts by state ("10 complete, 2 pruned") and the history chart (None without values)."""
    search = get(report, "search")
    trials = [
        TrialPoint(
            number=int(get(t, "number")),
            state=str(get(t, "state", "UNKNOWN")),
            objective=as_number(get(t, "objective")),
            best_so_far=as_number(get(t, "best_so_far")),
        )
        for t in get(search, "history", [])
    ]
    states = Counter(t.state for t in trials)
    has_values = any(t.objective is not None for t in trials)
    return {
        "trials": len(trials),
        "counts": ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) or "none",
        "has_values": has_values,
        "chart": Markup(charts.history_svg(trials, get(search, "best_trial"))) if has_values else None,
    }


def _weights(report: Any) -> dict[str, Any]:
    """The weights chart, and the layer-wise weights as rows over every expert named."""
    weights = {name: as_number(w) for name, w in _items(get(report, "weights"))}
    groups = _items(get(report, "layer_weights"))
    experts = list(weights)
    for _, per_expert in groups:
        experts += [name for name, _ in _items(per_expert) if name not in experts]
    return {
        "chart": Markup(charts.weights_svg(weights)) if weights else None,
        "layer_experts": experts,
        "layer_rows": [(group, [get(per_expert, x) for x in experts]) for group, per_expert in groups],
    }


def _baselines(report: Any, categories: list[str]) -> dict[str, Any]:
    """The soup and each baseline on test per category and on average, best marked; the intervals."""
    soup, baselines = get(report, "soup"), get(report, "baselines")
    series, details = [], []
    for name, label, colour in _SERIES:
        data = soup if name == "soup" else get(baselines, name)
        if not data:
            continue
        label = label if name == "soup" else get(data, "label", label)
        test = get(data, "test")
        values = [as_number(get(test, c)) for c in categories] + [as_number(get(data, "test_average"))]
        series.append(BarSeries(name, label, colour, values))
        members = (
            [n for n, _ in _items(get(report, "weights"))] if name == "soup" else get(data, "members", [])
        )
        details.append((label, ", ".join(str(m) for m in members), get(data, "dev_average"), values[-1]))
    groups = [*categories, "Average"]
    rows = []
    for i, group in enumerate(groups):
        best = max((s.values[i] for s in series if s.values[i] is not None), default=None)
        rows.append((group, [(s.values[i], best is not None and s.values[i] == best) for s in series]))
    intervals = []
    for key, interval in _items(get(soup, "intervals")):
        low, high = as_number(get(interval, "low")), as_number(get(interval, "high"))
        intervals.append(
            {
                "comparison": key.replace("vs_", "soup vs ").replace("_", " "),
                "interval": interval,
                "excludes_zero": low is not None and high is not None and (low > 0 or high < 0),
            }
        )
    return {
        "series": series,
        "chart": Markup(charts.grouped_bars_svg(groups, series)) if series else None,
        "rows": rows,
        "details": details,
        "intervals": intervals,
    }


def _interpolation(report: Any) -> dict[str, Any]:
    """The curve between the soup's two largest ingredients: its chart, and a row per point (t, each
    category, the average, and how far the average lies below the straight line between the ends)."""
    curve = get(report, "interpolation")
    points = get(curve, "points", [])
    ts = [t for t in (as_number(get(p, "t")) for p in points) if t is not None]
    if len(points) < 2 or len(ts) < len(points):
        return {"chart": None, "categories": [], "rows": []}
    names = [n for n, _ in _items(get(points[0], "categories"))]
    values = {n: [as_number(get(get(p, "categories"), n)) for p in points] for n in names}
    averages = [as_number(get(p, "average")) for p in points]
    first, last = averages[0], averages[-1]
    rows = []
    for i, (t, avg) in enumerate(zip(ts, averages, strict=True)):
        below = None
        if first is not None and last is not None and avg is not None:
            below = (1 - t) * first + t * last - avg
        rows.append((t, [values[n][i] for n in names], avg, below))
    svg = interpolation_svg(
        ts,
        values,
        averages,
        a=str(get(curve, "a", "A")),
        b=str(get(curve, "b", "B")),
        split=str(get(curve, "split", "dev")),
    )
    return {"chart": Markup(svg), "categories": names, "rows": rows}
