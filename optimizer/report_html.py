"""Render a SoCE report (the dict written as report.json) as one self-contained HTML page.

The page has no external resources and no JavaScript: inline CSS and inline SVG charts drawn here with
the standard library only, so it can be mailed, archived or opened offline. Every string taken from the
report is escaped; any key may be missing or None, and the page says so instead of failing.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["render_report_html"]

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
_SERIES: tuple[tuple[str, str, str], ...] = (
    ("soup", "Soup", "#D55E00"),
    ("best_single", "Best single", "#0072B2"),
    ("uniform", "Uniform (all)", "#999999"),
    ("uniform_experts", "Uniform (experts)", "#CC79A7"),
    ("greedy", "Greedy", "#009E73"),
)
# Colour stops: sequential blues for scores, blue-white-red for correlations in -1..1.
_BLUES = ((0.0, (247, 251, 255)), (0.5, (107, 174, 214)), (1.0, (8, 48, 107)))
_DIVERGING = ((0.0, (33, 102, 172)), (0.5, (247, 247, 247)), (1.0, (178, 24, 43)))
_MISSING_FILL = "#e0e0e0"
_CHAR_W = 6.6  # rough width of one character at the charts' 11px font, for layout only
_ROW_LABEL_CHARS = 32  # longer labels are shortened on charts; the full text stays in a tooltip
_COL_LABEL_CHARS = 24
_LEGEND_W = 300  # colour legend under the heatmaps: ten steps, the n/a swatch and its label

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1b1b;
       margin: 0 auto; max-width: 1180px; padding: 1rem 1.5rem 3rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
h3 { margin-bottom: .3rem; }
.meta { color: #555; margin: 0 0 .8rem; } .meta span { margin-right: 1.2rem; }
.headline { background: #fff4ec; border-left: 4px solid #D55E00; padding: .6rem .9rem; font-size: 1.05rem; }
nav a { margin-right: .9rem; color: #0072B2; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: .25rem .55rem; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.num { text-align: right; } td.best { font-weight: 700; }
svg.chart { display: block; max-width: 100%; height: auto; margin: .4rem 0 1rem; }
svg.chart text { font: 11px system-ui, -apple-system, "Segoe UI", sans-serif; fill: #1b1b1b; }
svg.chart text.title { font-size: 13px; font-weight: 600; }
svg.chart text.weak { font-weight: 700; fill: #b2182b; }
.note { color: #555; } .explanation { background: #f7f7f7; padding: .5rem .8rem; white-space: pre-wrap; }
.warnings li { color: #8a4b00; } .sig { color: #006d2c; font-weight: 600; }
.verdict { font-size: 1.2rem; font-weight: 600; padding: .6rem .9rem; margin: .4rem 0 .8rem; }
.verdict-soup { background: #e7f4ea; border-left: 4px solid #006d2c; }
.verdict-single { background: #eef3fa; border-left: 4px solid #0072B2; }
code { background: #f2f2f2; padding: 0 .25rem; word-break: break-all; }
"""


def render_report_html(report: Mapping[str, Any]) -> str:
    """Render the report as a single HTML page (inline CSS and SVG, no scripts, no external resources)."""
    report = _mapping(report)
    candidates, categories = _candidates_and_categories(report)
    suite = _text(report.get("suite")) or "unnamed suite"
    sections = [
        _header_section(report, suite),
        _scores_section(report, candidates, categories),
        _correlation_section(report, categories),
        _experts_section(report),
        _search_section(report),
        _weights_section(report),
        _selection_section(report),
        _baselines_section(report, categories),
        _warnings_section(report),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>SoCE report: {_e(suite)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(s for s in sections if s)
        + "\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------------------------------------------------
# Sections


def _header_section(report: Mapping[str, Any], suite: str) -> str:
    search = _mapping(report.get("search"))
    soup = _mapping(report.get("soup"))
    n_trials = _int(search.get("n_trials"))
    if n_trials is None:
        n_trials = len(_list(search.get("history")))
    meta = [
        ("sampler", _text(search.get("sampler")) or "n/a"),
        ("space", _text(search.get("space")) or "n/a"),
        ("trials", str(n_trials)),
        ("evaluations", _text(search.get("evaluations")) or "n/a"),
        ("created", _text(report.get("created")) or "n/a"),
        ("soce", _text(report.get("soce_version")) or "n/a"),
    ]
    meta_html = "".join(f"<span><strong>{_e(k)}:</strong> {_e(v)}</span>" for k, v in meta)
    path = _text(soup.get("path"))
    where = f"<p>Soup written to <code>{_e(path)}</code></p>" if path else "<p>Soup path: n/a</p>"
    nav = "".join(
        f'<a href="#{anchor}">{label}</a>'
        for anchor, label in (
            ("scores", "Scores"),
            ("correlation", "Correlation"),
            ("experts", "Ingredients"),
            ("search", "Search"),
            ("weights", "Weights"),
            *([("selection", "Final choice")] if _mapping(report.get("selection")) else []),
            ("baselines", "Soup vs baselines"),
            *([("warnings", "Warnings")] if _list(report.get("warnings")) else []),
        )
    )
    return (
        f"<header>\n<h1>SoCE report: {_e(suite)}</h1>\n{verdict_html(report)}\n"
        f'<p class="meta">{meta_html}</p>\n{where}\n'
        f'<p class="headline">{_headline(report)}</p>\n<nav>{nav}</nav>\n</header>'
    )


def verdict_html(report: Mapping[str, Any]) -> str:
    """The verdict that opens the page: use the soup, or keep the named candidate (empty if none yet)."""
    verdict = _text(report.get("verdict"))
    if not verdict:
        return ""
    decision = _mapping(report.get("decision"))
    kind = "soup" if decision.get("kind") == "soup" else "single"
    model = _text(decision.get("model"))
    where = f"<br><small>model: <code>{_e(model)}</code></small>" if model else ""
    return f'<p class="verdict verdict-{kind}" id="verdict">{_e(verdict)}{where}</p>'


def _selection_section(report: Mapping[str, Any]) -> str:
    """Every contender for the final model on the search and selection parts of dev, and on test."""
    selection = _mapping(report.get("selection"))
    contenders = _list(selection.get("contenders"))
    if not contenders:
        return ""
    fraction = _num(selection.get("fraction"))
    level = _num(selection.get("level"))
    pct = f"{level * 100:g}%" if level is not None else "95%"
    out = ['<section id="selection">\n<h2>Final choice</h2>']
    part = (
        f"{fraction * 100:g}% of each task's dev examples, chosen by a hash of the example, were kept out "
        "of the search and of the greedy soup"
        if fraction
        else "no dev examples were kept out of the search: the choice reused the examples it maximised"
    )
    out.append(
        f'<p class="note">{_e(part)}. A soup is chosen only if its gain over the best single candidate on '
        f"the selection part has a lower bound above zero ({_e(pct)}, simultaneous over the soups "
        "compared); test scores are reported, never used to choose.</p>"
    )
    out.append(f'<p class="explanation">{_e(_text(selection.get("reason")))}</p>')
    chosen = _text(selection.get("chosen"))
    rows = []
    for c in contenders:
        c = _mapping(c)
        name = _text(c.get("name"))
        label = _text(c.get("label")) or name
        mark = " (chosen)" if name == chosen else ""
        passed = "yes" if c.get("passed") else ("reference" if c.get("kind") == "single" else "no")
        rows.append(
            [
                f"{_e(label)}{_e(mark)}",
                _num_cell(c.get("search_average")),
                _num_cell(c.get("average"), best=name == chosen),
                _num_cell(c.get("diff"), signed=True),
                _num_cell(c.get("low"), signed=True),
                _e(passed),
                _num_cell(c.get("test_average")),
            ]
        )
    out.append(
        _table_html(
            [
                "contender",
                "dev search part",
                "dev selection part",
                "vs best single",
                "lower bound",
                "passes",
                "test (reported)",
            ],
            rows,
        )
    )
    out.append("</section>")
    return "\n".join(out)


def _headline(report: Mapping[str, Any]) -> str:
    """Soup test average against the best single candidate and the uniform soup, with the CIs."""
    soup = _mapping(report.get("soup"))
    baselines = _mapping(report.get("baselines"))
    intervals = _mapping(soup.get("intervals"))
    parts = [f"Soup test average <strong>{_fmt(soup.get('test_average'))}</strong>"]
    for name, key, label in (
        ("best_single", "vs_best_single", "best single"),
        ("uniform", "vs_uniform", "uniform"),
    ):
        baseline = _mapping(baselines.get(name))
        text = f"{label} {_fmt(baseline.get('test_average'))}"
        interval = _mapping(intervals.get(key))
        if interval:
            text += f" (difference {_interval_text(interval)})"
        parts.append(text)
    return parts[0] + " vs " + "; ".join(parts[1:]) + " on the held-out test split."


def _interval_text(interval: Mapping[str, Any]) -> str:
    level = _num(interval.get("level"))
    level_text = f"{level * 100:g}% CI" if level is not None else "CI"
    return (
        f"{_fmt(interval.get('diff'), signed=True)}, {level_text} "
        f"[{_fmt(interval.get('low'), signed=True)}, {_fmt(interval.get('high'), signed=True)}]"
    )


def _scores_section(report: Mapping[str, Any], candidates: list[str], categories: list[str]) -> str:
    out = ['<section id="scores">\n<h2>Score matrix</h2>']
    if not candidates or not categories:
        out.append('<p class="note">No scores in this report.</p></section>')
        return "\n".join(out)
    outlined = set()
    for expert in _list(report.get("experts")):
        expert = _mapping(expert)
        cand, cat = _text(expert.get("candidate")), _text(expert.get("category"))
        if cand in candidates and cat in categories:
            outlined.add((candidates.index(cand), categories.index(cat)))
    out.append(
        '<p class="note">Candidates (rows) by categories (columns); outlined cells are the category '
        "experts. Colours span each matrix's own range.</p>"
    )
    dev_title = (
        "Dev split (its search part chooses the ingredients and weights, its selection part the final model)"
        if _mapping(report.get("dev_parts"))
        else "Dev split (used for every choice)"
    )
    for split, title in (("dev", dev_title), ("test", "Test split (held out)")):
        scores = _mapping(report.get(f"{split}_scores"))
        averages = _mapping(report.get(f"{split}_average"))
        if not scores:
            out.append(f'<p class="note">No {split} scores in this report.</p>')
            continue
        matrix = [[_num(_mapping(scores.get(c)).get(k)) for k in categories] for c in candidates]
        out.append(f"<h3>{_e(title)}</h3>")
        out.append(
            _heatmap_svg(
                chart=f"scores-{split}",
                title=f"{split} scores",
                rows=candidates,
                cols=categories,
                matrix=matrix,
                diverging=False,
                digits=3,
                outlined=outlined,
                extra_column=("average", [_num(averages.get(c)) for c in candidates]),
            )
        )
    out.append("</section>")
    return "\n".join(out)


def _correlation_section(report: Mapping[str, Any], categories: list[str]) -> str:
    corr = _mapping(report.get("correlation"))
    out = ['<section id="correlation">\n<h2>Correlation between categories</h2>']
    tau = _num(corr.get("tau"))
    rule = "|rho| < tau" if corr.get("absolute") else "rho < tau"
    weak = [c for c in (_text(w) for w in _list(corr.get("weak_categories"))) if c]
    out.append(
        f"<p>Threshold tau = <strong>{_fmt(tau, digits=2)}</strong>; a category is weakly correlated if "
        f"{_e(rule)} for some other category. Weakly correlated: "
        f"<strong>{_e(', '.join(weak)) if weak else 'none'}</strong>"
        + (" (marked * on the charts).</p>" if weak and len(categories) >= 2 else ".</p>")
    )
    explanation = _text(corr.get("explanation"))
    if explanation:
        out.append(f'<p class="explanation">{_e(explanation)}</p>')
    if len(categories) < 2:
        out.append('<p class="note">Correlations need two categories or more; this suite has one.</p>')
    else:
        for method in ("pearson", "spearman"):
            table = _mapping(corr.get(method))
            if not table:
                out.append(f'<p class="note">No {method.capitalize()} correlations in this report.</p>')
                continue
            matrix = [[_num(_mapping(table.get(a)).get(b)) for b in categories] for a in categories]
            out.append(f"<h3>{method.capitalize()}</h3>")
            out.append(
                _heatmap_svg(
                    chart=f"correlation-{method}",
                    title=f"{method.capitalize()} correlation across candidates",
                    rows=categories,
                    cols=categories,
                    matrix=matrix,
                    diverging=True,
                    digits=2,
                    marked={categories.index(c) for c in weak if c in categories},
                )
            )
    out.append(_list_html(corr.get("warnings"), "Correlation warnings"))
    out.append("</section>")
    return "\n".join(o for o in out if o)


def _experts_section(report: Mapping[str, Any]) -> str:
    experts = [_mapping(e) for e in _list(report.get("experts"))]
    out = ['<section id="experts">\n<h2>Ingredients: category experts and the best single candidate</h2>']
    if not experts:
        out.append('<p class="note">No experts in this report.</p></section>')
        return "\n".join(out)
    rows = [
        [
            _e(e.get("category") or "all (dev average)"),
            _e(e.get("candidate", "n/a")),
            _num_cell(e.get("score")),
            _e(e.get("runner_up")) if e.get("runner_up") is not None else "n/a",
            _num_cell(e.get("runner_up_score")),
            _num_cell(e.get("margin"), signed=True),
            _e(e.get("reason", "")),
        ]
        for e in experts
    ]
    header = ["Category", "Ingredient", "Dev score", "Runner-up", "Runner-up score", "Margin", "Reason"]
    out.append(_table_html(header, rows))
    out.append("</section>")
    return "\n".join(out)


def _search_section(report: Mapping[str, Any]) -> str:
    search = _mapping(report.get("search"))
    history = [_mapping(t) for t in _list(search.get("history"))]
    out = ['<section id="search">\n<h2>Weight search</h2>']
    states: dict[str, int] = {}
    for trial in history:
        state = _text(trial.get("state")) or "UNKNOWN"
        states[state] = states.get(state, 0) + 1
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) or "none"
    out.append(
        f"<p>Sampler <strong>{_e(_text(search.get('sampler')) or 'n/a')}</strong> over the "
        f"<strong>{_e(_text(search.get('space')) or 'n/a')}</strong> space; trials: {_e(counts)}. "
        f"Best dev objective {_fmt(search.get('best_dev_objective'))} "
        f"(trial {_e(_text(search.get('best_trial')) or 'n/a')}).</p>"
    )
    if not history:
        out.append('<p class="note">No search trials were run.</p>')
    elif not any(_num(t.get("objective")) is not None for t in history):
        out.append('<p class="note">No trial produced an objective value, so there is nothing to plot.</p>')
    else:
        out.append(_history_svg(history, _int(search.get("best_trial"))))
    out.append("</section>")
    return "\n".join(out)


def _weights_section(report: Mapping[str, Any]) -> str:
    weights = {_text(k): _num(v) for k, v in _mapping(report.get("weights")).items()}
    out = ['<section id="weights">\n<h2>Soup weights</h2>']
    if weights:
        out.append(_weights_svg(weights))
    else:
        out.append('<p class="note">No weights in this report.</p>')
    layer_weights = _mapping(report.get("layer_weights"))
    if layer_weights:
        experts = list(weights)
        for group in layer_weights.values():
            experts += [k for k in (_text(k) for k in _mapping(group)) if k not in experts]
        rows = [
            [_e(group)] + [_num_cell(_mapping(per_expert).get(x)) for x in experts]
            for group, per_expert in layer_weights.items()
        ]
        out.append("<h3>Layer-wise weights</h3>")
        out.append(_table_html(["Group", *(_e(x) for x in experts)], rows))
    out.append("</section>")
    return "\n".join(out)


def _baselines_section(report: Mapping[str, Any], categories: list[str]) -> str:
    soup = _mapping(report.get("soup"))
    baselines = _mapping(report.get("baselines"))
    out = ['<section id="baselines">\n<h2>Soup against baselines (test split)</h2>']
    series = []  # (name, label, colour, per-category values + average)
    for name, label, colour in _SERIES:
        data = soup if name == "soup" else _mapping(baselines.get(name))
        if not data:
            continue
        label = label if name == "soup" else (_text(data.get("label")) or label)
        test = _mapping(data.get("test"))
        values = [_num(test.get(c)) for c in categories] + [_num(data.get("test_average"))]
        series.append((name, label, colour, values))
    if not series:
        out.append('<p class="note">No soup or baseline results in this report.</p></section>')
        return "\n".join(out)
    groups = [*categories, "Average"]
    out.append(_grouped_bars_svg(groups, series))
    rows = []
    for i, group in enumerate(groups):
        present = [s[3][i] for s in series if s[3][i] is not None]
        best = max(present) if present else None
        rows.append(
            [_e(group)] + [_num_cell(s[3][i], best=best is not None and s[3][i] == best) for s in series]
        )
    out.append(_table_html(["Category", *(_e(s[1]) for s in series)], rows))
    # Where each baseline comes from, and its dev average (what it was chosen on, not the result).
    details = []
    for name, label, _colour, values in series:
        data = soup if name == "soup" else _mapping(baselines.get(name))
        members = ", ".join(_text(m) for m in _list(data.get("members")))
        if name == "soup":
            members = ", ".join(_text(k) for k in _mapping(report.get("weights"))) or "n/a"
        details.append(
            [_e(label), _e(members or "n/a"), _num_cell(data.get("dev_average")), _num_cell(values[-1])]
        )
    out.append(_table_html(["Method", "Members", "Dev average", "Test average"], details))
    intervals = _mapping(soup.get("intervals"))
    if intervals:
        rows = []
        for key, interval in intervals.items():
            interval = _mapping(interval)
            low, high = _num(interval.get("low")), _num(interval.get("high"))
            excludes_zero = low is not None and high is not None and (low > 0 or high < 0)
            verdict = '<span class="sig">yes</span>' if excludes_zero else "no"
            level = _num(interval.get("level"))
            rows.append(
                [
                    _e(_text(key).replace("vs_", "soup vs ").replace("_", " ")),
                    _num_cell(interval.get("diff"), signed=True),
                    _num_cell(low, signed=True),
                    _num_cell(high, signed=True),
                    f"{level * 100:g}%" if level is not None else "n/a",
                    verdict,
                ]
            )
        out.append("<h3>Paired bootstrap intervals of the test-average difference</h3>")
        out.append(_table_html(["Comparison", "Difference", "Low", "High", "Level", "Excludes 0"], rows))
    out.append("</section>")
    return "\n".join(out)


def _warnings_section(report: Mapping[str, Any]) -> str:
    listed = _list_html(report.get("warnings"), None)
    if not listed:
        return ""
    return f'<section id="warnings">\n<h2>Warnings</h2>\n{listed}\n</section>'


# ---------------------------------------------------------------------------------------------------------
# Charts


def _heatmap_svg(
    *,
    chart: str,
    title: str,
    rows: Sequence[str],
    cols: Sequence[str],
    matrix: list[list[float | None]],
    diverging: bool,
    digits: int,
    outlined: set[tuple[int, int]] | None = None,
    marked: set[int] | None = None,
    extra_column: tuple[str, list[float | None]] | None = None,
) -> str:
    """A labelled matrix of coloured cells with values; `marked` rows/columns get a * and bold labels."""
    outlined, marked = outlined or set(), marked or set()
    cell_w, cell_h = 62, 24
    label_w = _label_width(rows, _ROW_LABEL_CHARS) + 14
    col_chars = min(max(len(c) for c in cols) + 2, _COL_LABEL_CHARS)
    top = 30 + col_chars * _CHAR_W * 0.65  # labels are rotated by 40 degrees
    n_extra = 1 if extra_column else 0
    grid_w = (len(cols) + n_extra) * cell_w + (10 if extra_column else 0)
    width = max(label_w + grid_w + col_chars * _CHAR_W * 0.8 + 10, label_w + _LEGEND_W)
    height = top + len(rows) * cell_h + 56
    if diverging:
        lo, hi = -1.0, 1.0
    else:
        present = [v for row in matrix for v in row if v is not None]
        present += [v for v in (extra_column[1] if extra_column else []) if v is not None]
        lo, hi = (min(present), max(present)) if present else (0.0, 1.0)

    def colour(v: float | None) -> str:
        if v is None:
            return _MISSING_FILL
        t = 0.5 if hi == lo else (v - lo) / (hi - lo)
        return _rgb(_interpolate(_DIVERGING if diverging else _BLUES, t))

    mark_room = 2 if marked else 0  # room for the "* " in front of marked labels
    short_rows = _short_labels(rows, _ROW_LABEL_CHARS - mark_room)
    short_cols = _short_labels(cols, _COL_LABEL_CHARS - mark_room)

    def label(short: list[str], index: int) -> str:
        return ("* " if index in marked else "") + short[index]

    parts = [f'<text class="title" x="4" y="16">{_e(title)}</text>']
    for j, col in enumerate(cols):
        x, y = label_w + (j + 0.5) * cell_w, top - 6
        cls = ' class="weak"' if j in marked else ""
        parts.append(
            f'<text{cls} x="{x:.1f}" y="{y:.1f}" transform="rotate(-40 {x:.1f} {y:.1f})">'
            f"<title>{_e(col)}</title>{_e(label(short_cols, j))}</text>"
        )
    if extra_column:
        x = label_w + (len(cols) + 0.5) * cell_w + 10
        parts.append(
            f'<text x="{x:.1f}" y="{top - 6:.1f}" transform="rotate(-40 {x:.1f} {top - 6:.1f})">'
            f"{_e(extra_column[0])}</text>"
        )
    for i, row in enumerate(rows):
        y = top + i * cell_h
        cls = ' class="weak"' if i in marked else ""
        parts.append(
            f'<text{cls} x="{label_w - 6}" y="{y + cell_h / 2 + 4:.1f}" text-anchor="end">'
            f"<title>{_e(row)}</title>{_e(label(short_rows, i))}</text>"
        )
        cells = [(j, cols[j], matrix[i][j], "cell") for j in range(len(cols))]
        if extra_column:
            cells.append((len(cols), extra_column[0], extra_column[1][i], "cell-extra"))
        for j, col, value, cls in cells:
            x = label_w + j * cell_w + (10 if cls == "cell-extra" else 0)
            fill = colour(value)
            text = _fmt(value, digits=digits)
            parts.append(
                f'<rect class="{cls}" x="{x}" y="{y:.1f}" width="{cell_w}" height="{cell_h}" '
                f'fill="{fill}" stroke="#fff"><title>{_e(row)} / {_e(col)}: {text}</title></rect>'
                f'<text x="{x + cell_w / 2:.1f}" y="{y + cell_h / 2 + 4:.1f}" text-anchor="middle" '
                f'style="fill:{_text_colour(fill)}">{text}</text>'
            )
    for i, j in sorted(outlined):
        parts.append(
            f'<rect class="expert-outline" x="{label_w + j * cell_w + 1.5}" y="{top + i * cell_h + 1.5:.1f}" '
            f'width="{cell_w - 3}" height="{cell_h - 3}" fill="none" stroke="#111" stroke-width="2.5"/>'
        )
    parts.append(_colour_legend(label_w, top + len(rows) * cell_h + 16, lo, hi, colour, digits))
    return _svg(chart, title, width, height, parts)


def _colour_legend(x0: float, y0: float, lo: float, hi: float, colour: Any, digits: int) -> str:
    steps, step_w = 10, 22
    parts = []
    for k in range(steps):
        value = lo + (hi - lo) * (k + 0.5) / steps
        parts.append(
            f'<rect class="legend-step" x="{x0 + k * step_w:.1f}" y="{y0:.1f}" width="{step_w}" '
            f'height="10" fill="{colour(value)}"/>'
        )
    parts.append(f'<text x="{x0:.1f}" y="{y0 + 24:.1f}">{_fmt(lo, digits=digits)}</text>')
    hi_x = x0 + steps * step_w
    parts.append(f'<text x="{hi_x:.1f}" y="{y0 + 24:.1f}" text-anchor="end">{_fmt(hi, digits=digits)}</text>')
    missing_x = x0 + steps * step_w + 20
    parts.append(
        f'<rect class="legend-step" x="{missing_x:.1f}" y="{y0:.1f}" width="{step_w}" height="10" '
        f'fill="{_MISSING_FILL}"/><text x="{missing_x + step_w + 4:.1f}" y="{y0 + 9:.1f}">n/a</text>'
    )
    return "".join(parts)


def _history_svg(history: list[Mapping[str, Any]], best_trial: int | None) -> str:
    """Objective per trial (pruned hollow, failed red) and the best-so-far as a step line."""
    width, height = 980, 360
    left, right, top, bottom = 64, 20, 46, 52
    # A trial without a number (partial reports) takes its position in the history.
    numbered = [(n if (n := _int(t.get("number"))) is not None else i, t) for i, t in enumerate(history)]
    trials = sorted(numbered, key=lambda item: item[0])
    points = [(n, _num(t.get("objective")), _text(t.get("state")).upper()) for n, t in trials]
    points = [(n, v, s) for n, v, s in points if v is not None]
    best = [(n, _num(t.get("best_so_far"))) for n, t in trials]
    if all(v is None for _, v in best):  # older reports: recompute the running best of complete trials
        running: float | None = None
        best = []
        for n, v, s in points:
            if s == "COMPLETE":
                running = v if running is None else max(running, v)
            best.append((n, running))
    best = [(n, v) for n, v in best if v is not None]
    numbers = [n for n, _ in trials] or [0]
    x_lo, x_hi = min(numbers), max(numbers)
    if x_lo == x_hi:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    values = [v for _, v, _ in points] + [v for _, v in best]
    y_lo, y_hi = min(values), max(values)
    pad = (y_hi - y_lo) * 0.06 or 0.01
    y_lo, y_hi = y_lo - pad, y_hi + pad
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(n: float) -> float:
        return left + (n - x_lo) / (x_hi - x_lo) * plot_w

    def sy(v: float) -> float:
        return top + (1 - (v - y_lo) / (y_hi - y_lo)) * plot_h

    parts = [f'<text class="title" x="4" y="16">Dev objective per trial ({len(points)} with a value)</text>']
    parts += _axes(left, top, plot_w, plot_h, "trial", "dev objective (mean category score)")
    x_ticks = [t for t in _nice_ticks(x_lo, x_hi, 8) if t == int(t) and x_lo <= t <= x_hi]
    for t in x_ticks:
        parts.append(_tick(sx(t), top + plot_h, f"{int(t)}", vertical=True))
    for t in _nice_ticks(y_lo, y_hi, 6):
        if y_lo <= t <= y_hi:
            parts.append(_tick(left, sy(t), _fmt(t), vertical=False, grid_to=left + plot_w))
    if best:
        d = f"M{sx(best[0][0]):.1f},{sy(best[0][1]):.1f}"
        for n, v in best[1:]:
            d += f" H{sx(n):.1f} V{sy(v):.1f}"
        d += f" H{sx(numbers[-1]):.1f}"
        parts.append(f'<path class="best-so-far" d="{d}" fill="none" stroke="#D55E00" stroke-width="2"/>')
    radius = 3.5 if len(points) <= 100 else 2.5
    for n, v, state in points:
        if state == "COMPLETE":
            style, cls = 'fill="#0072B2" fill-opacity="0.8"', "trial-complete"
        elif state == "PRUNED":
            style, cls = 'fill="none" stroke="#999" stroke-width="1.2"', "trial-pruned"
        else:
            style, cls = 'fill="none" stroke="#b2182b" stroke-width="1.2"', "trial-fail"
        parts.append(
            f'<circle class="trial {cls}" cx="{sx(n):.1f}" cy="{sy(v):.1f}" r="{radius}" {style}>'
            f"<title>trial {n} ({_e(state.lower())}): {_fmt(v)}</title></circle>"
        )
    for n, v, _ in points:
        if n == best_trial:
            parts.append(
                f'<circle class="best-trial" cx="{sx(n):.1f}" cy="{sy(v):.1f}" r="7" fill="none" '
                f'stroke="#111" stroke-width="1.5"><title>best trial {n}: {_fmt(v)}</title></circle>'
            )
            break
    # Legend, top right; its marks have their own class so they never count as trials.
    lx = left + plot_w - 310
    parts.append(
        f'<circle class="legend-mark" cx="{lx}" cy="12" r="3.5" fill="#0072B2"/>'
        f'<text x="{lx + 8}" y="16">complete</text>'
        f'<circle class="legend-mark" cx="{lx + 78}" cy="12" r="3.5" fill="none" stroke="#999"/>'
        f'<text x="{lx + 86}" y="16">pruned</text>'
        f'<circle class="legend-mark" cx="{lx + 146}" cy="12" r="3.5" fill="none" stroke="#b2182b"/>'
        f'<text x="{lx + 154}" y="16">failed</text>'
        f'<line class="legend-mark" x1="{lx + 206}" y1="12" x2="{lx + 226}" y2="12" stroke="#D55E00" '
        f'stroke-width="2"/><text x="{lx + 232}" y="16">best so far</text>'
    )
    return _svg("history", "Dev objective per trial", width, height, parts)


def _weights_svg(weights: Mapping[str, float | None]) -> str:
    """Horizontal bars, one per expert, with the weight written at the end."""
    names = list(weights)
    bar_h, gap = 18, 6
    label_w = _label_width(names, _ROW_LABEL_CHARS) + 14
    plot_w, top = 420, 30
    height = top + len(names) * (bar_h + gap) + 40
    width = label_w + plot_w + 70
    w_max = max([v for v in weights.values() if v is not None] + [0.0])
    ticks = [t for t in _nice_ticks(0.0, w_max or 1.0, 5) if t >= 0]
    hi = max(ticks[-1], w_max) if ticks else 1.0
    parts = ['<text class="title" x="4" y="16">Weight per expert</text>']
    axis_y = top + len(names) * (bar_h + gap)
    for t in ticks:
        x = label_w + t / hi * plot_w
        parts.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{axis_y}" stroke="#eee"/>'
            f'<text x="{x:.1f}" y="{axis_y + 14}" text-anchor="middle">{_fmt(t, digits=2)}</text>'
        )
    short = _short_labels(names, _ROW_LABEL_CHARS)
    for i, name in enumerate(names):
        y = top + i * (bar_h + gap)
        value = weights[name]
        length = max(value or 0.0, 0.0) / hi * plot_w
        parts.append(
            f'<text x="{label_w - 6}" y="{y + bar_h / 2 + 4:.1f}" text-anchor="end"><title>{_e(name)}</title>'
            f"{_e(short[i])}</text>"
            f'<rect class="bar" x="{label_w}" y="{y}" width="{length:.1f}" height="{bar_h}" fill="#D55E00">'
            f"<title>{_e(name)}: {_fmt(value)}</title></rect>"
            f'<text x="{label_w + length + 5:.1f}" y="{y + bar_h / 2 + 4:.1f}">{_fmt(value)}</text>'
        )
    parts.append(f'<line x1="{label_w}" y1="{top - 4}" x2="{label_w}" y2="{axis_y}" stroke="#333"/>')
    parts.append(f'<text x="{label_w + plot_w / 2:.1f}" y="{axis_y + 30}" text-anchor="middle">weight</text>')
    return _svg("weights", "Weight per expert", width, height, parts)


def _grouped_bars_svg(groups: list[str], series: list[tuple[str, str, str, list[float | None]]]) -> str:
    """Vertical bars: one group per category plus the average, one bar per method in each group."""
    bar_w = 16 if len(groups) <= 7 else 11
    group_w = len(series) * bar_w + 18
    label_chars = min(max(len(g) for g in groups) + 1, _COL_LABEL_CHARS)
    # Group labels are rotated by 35 degrees and end under their group: the first may reach left.
    left = max(56.0, label_chars * _CHAR_W * 0.82 - group_w / 2 + 4)
    top, plot_h = 52, 240
    bottom = 24 + label_chars * _CHAR_W * 0.58
    plot_w = len(groups) * group_w
    legend = [_shorten(label, 28) for _name, label, _colour, _values in series]
    legend_x = list(itertools.accumulate((len(t) * _CHAR_W + 34 for t in legend), initial=left))
    width = max(left + plot_w + 30, legend_x[-1] + 10)
    height = top + plot_h + bottom
    present = [v for s in series for v in s[3] if v is not None]
    ticks = _nice_ticks(0.0, max([*present, 0.0]) or 1.0, 5)
    hi = max(ticks[-1], *present) if present else 1.0

    def sy(v: float) -> float:
        return top + (1 - max(v, 0.0) / hi) * plot_h

    parts = ['<text class="title" x="4" y="16">Test score per category: soup and baselines</text>']
    for k, (_name, _label, colour, _values) in enumerate(series):
        x = legend_x[k]
        parts.append(
            f'<rect class="legend-swatch" x="{x:.1f}" y="26" width="12" height="12" fill="{colour}"/>'
            f'<text x="{x + 16:.1f}" y="36">{_e(legend[k])}</text>'
        )
    parts += _axes(left, top, plot_w, plot_h, None, "test score")
    for t in ticks:
        if t <= hi:
            parts.append(_tick(left, sy(t), _fmt(t, digits=2), vertical=False, grid_to=left + plot_w))
    short = _short_labels(groups, _COL_LABEL_CHARS)
    for g, group in enumerate(groups):
        gx = left + g * group_w + 9.0
        if g == len(groups) - 1 and len(groups) > 1:  # set the average apart from the categories
            parts.append(
                f'<line x1="{gx - 9}" y1="{top}" x2="{gx - 9}" y2="{top + plot_h}" stroke="#999" '
                'stroke-dasharray="4 3"/>'
            )
        for k, (name, label, colour, values) in enumerate(series):
            value = values[g]
            if value is None:
                continue
            x, y = gx + k * bar_w, sy(value)
            parts.append(
                f'<rect class="bar series-{name}" x="{x}" y="{y:.1f}" width="{bar_w - 2}" '
                f'height="{top + plot_h - y:.1f}" fill="{colour}"><title>{_e(group)}, {_e(label)}: '
                f"{_fmt(value)}</title></rect>"
            )
        lx, ly = gx + len(series) * bar_w / 2, top + plot_h + 14
        weight = ' font-weight="700"' if g == len(groups) - 1 else ""
        parts.append(
            f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="end" transform="rotate(-35 {lx:.1f} {ly:.1f})"'
            f"{weight}><title>{_e(group)}</title>{_e(short[g])}</text>"
        )
    return _svg("baselines", "Test score per category: soup and baselines", width, height, parts)


def _axes(left: float, top: float, w: float, h: float, x_label: str | None, y_label: str) -> list[str]:
    parts = [
        f'<line x1="{left}" y1="{top + h}" x2="{left + w}" y2="{top + h}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + h}" stroke="#333"/>',
        f'<text x="14" y="{top + h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + h / 2:.1f})">{_e(y_label)}</text>',
    ]
    if x_label:
        parts.append(
            f'<text x="{left + w / 2:.1f}" y="{top + h + 38:.1f}" text-anchor="middle">{_e(x_label)}</text>'
        )
    return parts


def _tick(x: float, y: float, label: str, *, vertical: bool, grid_to: float | None = None) -> str:
    if vertical:  # a tick on the x axis
        return (
            f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x:.1f}" y2="{y + 5:.1f}" stroke="#333"/>'
            f'<text x="{x:.1f}" y="{y + 17:.1f}" text-anchor="middle">{_e(label)}</text>'
        )
    grid = (
        f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{grid_to:.1f}" y2="{y:.1f}" stroke="#eee"/>' if grid_to else ""
    )
    return (
        f'{grid}<line x1="{x - 5:.1f}" y1="{y:.1f}" x2="{x:.1f}" y2="{y:.1f}" stroke="#333"/>'
        f'<text x="{x - 8:.1f}" y="{y + 4:.1f}" text-anchor="end">{_e(label)}</text>'
    )


def _svg(chart: str, title: str, width: float, height: float, parts: list[str]) -> str:
    w, h = math.ceil(width), math.ceil(height)
    return (
        f'<svg class="chart" data-chart="{_e(chart)}" role="img" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}"><title>{_e(title)}</title>' + "".join(parts) + "</svg>"
    )


def _nice_ticks(lo: float, hi: float, count: int) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 times a power of ten) covering lo..hi."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t < hi + step * 0.999:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _interpolate(stops: tuple[tuple[float, tuple[int, int, int]], ...], t: float) -> tuple[int, int, int]:
    t = min(max(t, 0.0), 1.0)
    for (t0, c0), (t1, c1) in itertools.pairwise(stops):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            return tuple(round(a + (b - a) * f) for a, b in zip(c0, c1, strict=True))  # type: ignore[return-value]
    return stops[-1][1]


def _rgb(c: tuple[int, int, int]) -> str:
    return f"#{c[0]:02x}{c[1]:02x}{c[2]:02x}"


def _text_colour(fill: str) -> str:
    r, g, b = (int(fill[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return "#111" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "#fff"


# ---------------------------------------------------------------------------------------------------------
# HTML pieces and tolerant accessors (reports may be partial or come from older versions)


def _table_html(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table from pre-escaped cells; cells already wrapped in <td> are kept as they are."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num_cell(value: Any, *, signed: bool = False, best: bool = False) -> str:
    cls = "num best" if best else "num"
    return f'<td class="{cls}">{_fmt(value, signed=signed)}</td>'


def _list_html(items: Any, heading: str | None) -> str:
    texts = [_text(i) for i in _list(items) if _text(i)]
    if not texts:
        return ""
    title = f"<h3>{_e(heading)}</h3>" if heading else ""
    return title + '<ul class="warnings">' + "".join(f"<li>{_e(t)}</li>" for t in texts) + "</ul>"


def _candidates_and_categories(report: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The report's lists, or (older or partial reports) the keys of the dev score matrix."""
    scores = _mapping(report.get("dev_scores")) or _mapping(report.get("test_scores"))
    candidates = [_text(c) for c in _list(report.get("candidates"))] or [_text(c) for c in scores]
    categories = [_text(c) for c in _list(report.get("categories"))]
    if not categories:
        for row in scores.values():
            categories += [k for k in (_text(k) for k in _mapping(row)) if k not in categories]
    return candidates, categories


def _label_width(labels: Sequence[str], limit: int) -> float:
    return min(max((len(s) for s in labels), default=4), limit) * _CHAR_W


def _short_labels(labels: Sequence[str], limit: int) -> list[str]:
    """Labels of at most `limit` characters that keep apart what the full names tell apart.

    Fine-tune names often share a long start and end ("org/model-ft-task-3-lora-r64"): the cut goes into
    the shared part, so the part that differs stays visible.
    """
    if len(labels) < 2:
        return [_shorten(t, limit) for t in labels]
    prefix = _common_start(labels)
    suffix = _common_start([t[::-1] for t in labels])
    out = []
    for text in labels:
        if len(text) <= limit:
            out.append(text)
            continue
        p = min(prefix, len(text))
        s = min(suffix, len(text) - p)
        differing = len(text) - p - s
        # Keep one shared character before the differing part: "task-1-" and "task-11-" differ there.
        head = min((limit - 1) * 2 // 5, limit - 2 - differing - s)
        if head >= 1:  # one cut, inside the shared start
            out.append(text[:head] + "…" + text[len(text) - (limit - 1 - head) :])
        elif p + differing <= limit - 1:  # one cut, inside the shared end
            out.append(text[: limit - 1] + "…")
        else:
            out.append(_shorten(text, limit))
    return out


def _common_start(texts: Sequence[str]) -> int:
    n = 0
    for chars in zip(*texts, strict=False):
        if len(set(chars)) > 1:
            break
        n += 1
    return n


def _shorten(text: str, limit: int) -> str:
    """Cut the middle: fine-tune names often share a long prefix and differ near the end."""
    if len(text) <= limit:
        return text
    head = max((limit - 1) * 2 // 5, 1)
    tail = max(limit - 1 - head, 1)
    return text[:head] + "…" + text[-tail:]


def _fmt(value: Any, *, digits: int = 3, signed: bool = False) -> str:
    number = _num(value)
    if number is None:
        return "n/a"
    return f"{number:+.{digits}f}" if signed else f"{number:.{digits}f}"


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _e(value: Any) -> str:
    return html.escape(_text(value), quote=True)
